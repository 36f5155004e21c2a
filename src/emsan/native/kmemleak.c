/* Leak detection: the kernel's kmemleak over emsan's heap. A scan (at exit, or every N guest
 * instructions) marks every live object a root reaches, then follows pointers through the
 * objects it reached (a gray list); objects never reached are leaks. The roots are what the
 * caller names: ranges of guest memory (module data and BSS, stacks from their stack pointer
 * up, TLS, the guest's own mappings) and register values. As in kmemleak, any aligned word
 * that points at an object's start or inside it references it, whatever the pointer's tag.
 *
 * Objects live in memory emsan owns (k->host), so they are read directly; roots are guest
 * memory the engine owns, read in large chunks. Like Valgrind's and LeakSanitizer's, an
 * unreached object reachable from another unreached one is "indirect": a lost list is one
 * leak (its head) with the rest counted under it, and a cycle is led by its oldest object.
 * An object reported once is not reported again (kmemleak's OBJECT_REPORTED). */
#include <time.h>
#include "kasan.h"

/* struct obj's leak flag: reported by an earlier scan (kmemleak's OBJECT_REPORTED). Cleared
 * when the slot is allocated again. */
#define LEAK_REPORTED 1

#define CHUNK (64 << 10)       /* guest memory read per engine call */
#define HEAD_BYTES 32          /* bytes of a group's first object kept for its hex dump */
#define NO_SLAB UINT32_MAX
#define BATCH 256              /* words whose lookups overlap */
#define PREFETCH_AHEAD 4       /* gray objects fetched ahead of the one scanned */
#define PREFETCH_WORDS 256     /* ... their first 2 KiB */

/* The scan's index of the heap, built from the allocator's slabs when a scan starts: a word
 * pointing into the heap costs two reads from compact tables (its page's descriptor, its
 * slot's limit) and a bit. Every slot of every slab has a number; each slab has one more, a
 * sentinel that is never live, so that the slot computed for the tail of a slab misses. */
struct page_desc {
    uint32_t base;             /* number of the slab's first slot; NO_SLAB: no slab on this page */
    uint32_t recip;            /* ceil(2^32 / slot): the slot index by a multiplication; 0: large */
    int32_t delta;             /* offset from the first object = offset in page + delta (large
                                * objects: delta pages + offset in page) */
    uint32_t slot;             /* distance between objects (0: large) */
};

struct gray { const uint64_t *words; uint64_t n; };

struct scan_index {
    struct page_desc *pages;   /* per heap page below the allocator's bump */
    uint64_t npages;
    uint32_t *lim;             /* per slot: 0 not live, else max(size, 1), UINT32_MAX if larger */
    uint64_t *bits;            /* per slot: reached */
    uint32_t *slab_base;       /* per slab: number of its first slot */
    uint32_t *white;           /* per slot: index in whites + 1 (unreached objects only) */
    size_t nslots, cap_pages, cap_slots, cap_slabs;
};

struct white {                 /* an unreached object */
    uint64_t handle;
    uint32_t slot;             /* its number in the index */
    uint32_t seq;
    uint32_t group;
    uint8_t leader, indirect;
    uint64_t ind_count, ind_bytes;
};

struct emsan_leaks {
    kasan_t *k;
    /* time: allocation numbers to milliseconds since the scanner started (one checkpoint,
     * seq << 32 | ms, when the clock's tick changes between two allocations) */
    struct timespec t0;
    uint64_t last_ms;
    struct vec64 ticks;
    uint32_t main_seq;         /* allocation number main started at (0: not yet) */
    struct vec64 ignore;       /* pairs lo, hi: allocations called from this code are roots */
    struct scan_index ix;
    struct gray *gray; size_t ngray, gray_cap;   /* reached objects not scanned yet */
    uint64_t mask;             /* what of a word is an address (arm64: no top-byte tag) */
    uint64_t batch[BATCH];     /* heap offsets words point at, waiting for their lookups */
    size_t nbatch;
    /* the last scan's unreached objects, and its new leaks grouped by allocation stack */
    struct white *whites; size_t nwhites, whites_cap;
    emsan_leak_group *groups; size_t ngroups, groups_cap;
    uint32_t *members; size_t *group_start;      /* whites indices, group by group */
    emsan_leak_stats stats;
    /* --leaks-scan-every: executed code bytes (4 per instruction on arm64, about that on x86-64) */
    uint64_t code_bytes, next_scan, interval;
    int due;
};

static uint64_t now_ms(struct emsan_leaks *l)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)(ts.tv_sec - l->t0.tv_sec) * 1000 + (uint64_t)((ts.tv_nsec - l->t0.tv_nsec) / 1000000);
}

static uint64_t clock_ns(clockid_t which)
{
    struct timespec ts;
    clock_gettime(which, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Called for every allocation (heap.c) before it is counted (stats.allocs counts the ones that
 * succeeded): a fresh object has no leak flags, and its number, counting from 1. */
void leak_note_alloc(kasan_t *k, struct obj *o)
{
    o->leak = 0;
    o->seq = (uint32_t)k->stats.allocs + 1;
    struct emsan_leaks *l = k->leaks;
    if (!l) return;
    uint64_t ms = now_ms(l);
    if (ms != l->last_ms) {
        l->last_ms = ms;
        vec_push(&l->ticks, ((uint64_t)o->seq << 32) | (uint32_t)ms);
    }
}

/* Milliseconds since the start when allocation `seq` was made (the kernel's jiffies at HZ=1000). */
static uint64_t jiffies_of(struct emsan_leaks *l, uint32_t seq)
{
    size_t lo = 0, hi = l->ticks.n;
    while (lo < hi) {                  /* the last checkpoint at or before seq */
        size_t mid = (lo + hi) / 2;
        if ((uint32_t)(l->ticks.v[mid] >> 32) <= seq) lo = mid + 1;
        else hi = mid;
    }
    return lo ? (uint32_t)l->ticks.v[lo - 1] : 0;
}

EXPORT emsan_leaks *emsan_leaks_new(emsan_kasan *k)
{
    if (k->leaks) return k->leaks;
    struct emsan_leaks *l = calloc(1, sizeof *l);
    l->k = k;
    l->mask = k->rt->arm64 ? UNTAG_MASK : ~0ULL;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &l->t0);
    l->last_ms = UINT64_MAX;
    k->leaks = l;
    return l;
}

void leak_destroy(kasan_t *k)
{
    struct emsan_leaks *l = k->leaks;
    if (!l) return;
    struct scan_index *ix = &l->ix;
    free(ix->pages); free(ix->lim); free(ix->bits); free(ix->slab_base); free(ix->white);
    free(l->ticks.v); free(l->ignore.v); free(l->gray);
    free(l->whites); free(l->groups); free(l->members); free(l->group_start);
    free(l);
    k->leaks = NULL;
}

EXPORT void emsan_leaks_main_started(emsan_leaks *l) { l->main_seq = (uint32_t)l->k->stats.allocs + 1; }

EXPORT void emsan_leaks_ignore_callers(emsan_leaks *l, uint64_t lo, uint64_t hi)
{
    vec_push(&l->ignore, lo);
    vec_push(&l->ignore, hi);
}

/* ---- the index ---------------------------------------------------------------------------------- */

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return p;
    size_t n = *cap ? *cap : 1024;
    while (n < need) n *= 2;
    *cap = n;
    return realloc(p, n * elem);
}

static void build_index(struct emsan_leaks *l)
{
    kasan_t *k = l->k;
    struct scan_index *ix = &l->ix;
    size_t nslots = 0;
    ix->slab_base = grow(ix->slab_base, &ix->cap_slabs, k->nslabs + 1, sizeof *ix->slab_base);
    for (size_t id = 0; id < k->nslabs; id++) {
        ix->slab_base[id] = (uint32_t)nslots;
        nslots += k->slabs[id].nobj + 1;               /* and the sentinel */
    }
    ix->slab_base[k->nslabs] = (uint32_t)nslots;
    ix->nslots = nslots;
    if (nslots > ix->cap_slots || !ix->bits) {     /* (also a first scan before any allocation) */
        size_t cap = ix->cap_slots ? ix->cap_slots : 1024;
        while (cap < nslots) cap *= 2;
        free(ix->lim); free(ix->white); free(ix->bits);
        ix->lim = malloc(cap * sizeof *ix->lim);
        ix->white = malloc(cap * sizeof *ix->white);
        ix->bits = malloc((cap / 64 + 1) * sizeof *ix->bits);
        ix->cap_slots = cap;
    }
    memset(ix->bits, 0, (nslots / 64 + 1) * sizeof *ix->bits);
    for (size_t id = 0; id < k->nslabs; id++) {
        const struct slab *s = &k->slabs[id];
        uint32_t *lim = &ix->lim[ix->slab_base[id]];
        for (uint32_t i = 0; i < s->nobj; i++) {
            const struct obj *o = &s->objs[i];
            lim[i] = o->state != EMSAN_OBJ_LIVE ? 0 : !o->size ? 1 : o->size >= UINT32_MAX ? UINT32_MAX
                   : (uint32_t)o->size;
            l->stats.objects += o->state == EMSAN_OBJ_LIVE;
        }
        lim[s->nobj] = 0;
    }
    ix->npages = k->bump;
    ix->pages = grow(ix->pages, &ix->cap_pages, ix->npages, sizeof *ix->pages);
    for (uint64_t p = 0; p < ix->npages; p++) {
        struct page_desc *d = &ix->pages[p];
        uint32_t sid = k->page_slab[p];
        if (!sid) { d->base = NO_SLAB; continue; }
        const struct slab *s = &k->slabs[sid - 1];
        int64_t page_off = (int64_t)(p << PAGE_SHIFT) - (int64_t)(s->first - k->base);
        d->base = ix->slab_base[sid - 1];
        if (s->cls == LARGE_CLASS) {                   /* its object starts on a page boundary */
            d->recip = 0;
            d->slot = 0;
            d->delta = (int32_t)(page_off >> PAGE_SHIFT);
        } else {
            d->recip = (uint32_t)((0xFFFFFFFFULL / s->slot) + 1);
            d->slot = s->slot;
            d->delta = (int32_t)page_off;
        }
    }
}

/* The handle of slot number g (a binary search: for unreached objects only). */
static uint64_t handle_of(const struct scan_index *ix, size_t nslabs, uint32_t g)
{
    size_t lo = 0, hi = nslabs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (ix->slab_base[mid] <= g) lo = mid;
        else hi = mid;
    }
    return ((uint64_t)lo << 24) | (g - ix->slab_base[lo]);
}

/* The slot an offset in the heap (below the bump) is in, or -1 (a redzone, a guard page, no
 * slab); *within: the offset from the slot's start. */
static inline int64_t slot_at(const struct scan_index *ix, uint64_t off, uint64_t *within)
{
    const struct page_desc *d = &ix->pages[off >> PAGE_SHIFT];
    if (d->base == NO_SLAB) return -1;
    int64_t in = (int64_t)(off & (PAGE_SIZE - 1)), rel;
    uint64_t idx = 0;
    if (d->recip) {
        rel = in + d->delta;
        if (rel < 0) return -1;                        /* the slab's leading redzone */
        idx = ((uint64_t)rel * d->recip) >> 32;
    } else {
        rel = ((int64_t)d->delta << PAGE_SHIFT) + in;
        if (rel < 0) return -1;                        /* the guard page before a large object */
    }
    *within = (uint64_t)rel - idx * d->slot;
    return (int64_t)(d->base + idx);
}

/* Is `within` inside the live object of slot g? A zero-sized object is referenced by its address. */
static inline int inside(const struct emsan_leaks *l, uint64_t g, uint64_t within)
{
    uint32_t lim = l->ix.lim[g];
    if (within < lim) return 1;
    return lim == UINT32_MAX && within < obj_of(l->k, handle_of(&l->ix, l->k->nslabs, (uint32_t)g))->size;
}

/* The live object a word points at or into (kmemleak's lookup with aliases): its slot, or -1;
 * *start: its offset in the heap. */
static inline int64_t slot_of(const struct emsan_leaks *l, uint64_t word, uint64_t *start)
{
    uint64_t off = (word & l->mask) - l->k->base, within;
    if ((off >> PAGE_SHIFT) >= l->ix.npages) return -1;    /* below the heap wraps around too */
    int64_t g = slot_at(&l->ix, off, &within);
    if (g < 0 || !inside(l, (uint64_t)g, within)) return -1;
    *start = off - within;
    return g;
}

static inline int reached(const struct scan_index *ix, uint64_t g) { return ix->bits[g >> 6] >> (g & 63) & 1; }

/* ---- marking ------------------------------------------------------------------------------------- */

static void push_gray(struct emsan_leaks *l, uint64_t g, uint64_t start)
{
    kasan_t *k = l->k;
    l->ix.bits[g >> 6] |= 1ULL << (g & 63);
    uint64_t size = l->ix.lim[g];
    if (size == UINT32_MAX) size = obj_of(k, handle_of(&l->ix, k->nslabs, (uint32_t)g))->size;
    if (size < 8) return;                              /* nothing to scan */
    l->gray = grow(l->gray, &l->gray_cap, l->ngray + 1, sizeof *l->gray);
    l->gray[l->ngray++] = (struct gray){(const uint64_t *)(k->host + start), size / 8};
}

/* Words that may point into the heap wait in a batch: their pages' descriptors are fetched
 * while the batch fills, then their slots' limits and bits, so that the cache misses of many
 * words overlap instead of following one another. */
static void flush_batch(struct emsan_leaks *l)
{
    struct scan_index *ix = &l->ix;
    uint64_t slot[BATCH], within[BATCH];
    size_t m = 0;
    for (size_t i = 0; i < l->nbatch; i++) {
        int64_t g = slot_at(ix, l->batch[i], &within[m]);
        if (g < 0) continue;
        __builtin_prefetch(&ix->lim[g]);
        __builtin_prefetch(&ix->bits[g >> 6]);
        l->batch[m] = l->batch[i];
        slot[m++] = (uint64_t)g;
    }
    for (size_t i = 0; i < m; i++)
        if (!reached(ix, slot[i]) && inside(l, slot[i], within[i])) push_gray(l, slot[i], l->batch[i] - within[i]);
    l->nbatch = 0;
}

static void mark_words(struct emsan_leaks *l, const uint64_t *w, size_t n)
{
    const struct page_desc *pages = l->ix.pages;
    uint64_t base = l->k->base, mask = l->mask, npages = l->ix.npages;
    for (size_t i = 0; i < n; i++) {
        uint64_t off = (w[i] & mask) - base;
        if ((off >> PAGE_SHIFT) >= npages) continue;   /* not the heap (below it wraps around) */
        __builtin_prefetch(&pages[off >> PAGE_SHIFT]);
        l->batch[l->nbatch++] = off;
        if (l->nbatch == BATCH) flush_batch(l);
    }
}

/* Scan what was reached until nothing new is (an object's words wholly inside it, as
 * kmemleak's scan_block). Objects a few places down the gray stack are fetched meanwhile. */
static void drain_gray(struct emsan_leaks *l)
{
    for (;;) {
        if (!l->ngray) {
            if (!l->nbatch) break;
            flush_batch(l);
            continue;
        }
        struct gray gr = l->gray[--l->ngray];
        if (l->ngray >= PREFETCH_AHEAD) {
            const struct gray *next = &l->gray[l->ngray - PREFETCH_AHEAD];
            for (uint64_t j = 0; j < next->n && j < PREFETCH_WORDS; j += 8) __builtin_prefetch(next->words + j);
        }
        mark_words(l, gr.words, gr.n);
        l->stats.object_bytes += gr.n * 8;
    }
}

/* Guest memory [lo, hi) as roots, read through the engine in chunks (a chunk that is not all
 * mapped is read page by page, and unmapped pages are skipped). emsan's heap is no root. */
static void scan_guest(struct emsan_leaks *l, uint64_t lo, uint64_t hi, uint64_t *buf)
{
    kasan_t *k = l->k;
    lo = round_up(lo, 8);
    hi &= ~7ULL;
    if (lo < k->base + k->size && hi > k->base) {
        if (lo < k->base) scan_guest(l, lo, k->base, buf);
        if (hi > k->base + k->size) scan_guest(l, k->base + k->size, hi, buf);
        return;
    }
    for (uint64_t a = lo; a < hi;) {
        uint64_t n = hi - a < CHUNK ? hi - a : CHUNK;
        if (!mem_get(k->rt->uc, a, buf, n)) {
            mark_words(l, buf, n / 8);
            l->stats.root_bytes += n;
            a += n;
            continue;
        }
        uint64_t page_end = (a | (PAGE_SIZE - 1)) + 1, m = (page_end < hi ? page_end : hi) - a;
        if (!mem_get(k->rt->uc, a, buf, m)) {
            mark_words(l, buf, m / 8);
            l->stats.root_bytes += m;
        }
        a += m;
    }
}

/* ---- after marking: what was not reached ----------------------------------------------------- */

static void collect_whites(struct emsan_leaks *l)
{
    kasan_t *k = l->k;
    struct scan_index *ix = &l->ix;
    l->nwhites = 0;
    for (size_t id = 0; id < k->nslabs; id++) {
        const struct slab *s = &k->slabs[id];
        for (uint32_t i = 0; i < s->nobj; i++) {
            uint32_t g = ix->slab_base[id] + i;
            if (!ix->lim[g] || reached(ix, g)) continue;
            l->whites = grow(l->whites, &l->whites_cap, l->nwhites + 1, sizeof *l->whites);
            struct white *w = &l->whites[l->nwhites++];
            memset(w, 0, sizeof *w);
            w->handle = ((uint64_t)id << 24) | i;
            w->slot = g;
            w->seq = s->objs[i].seq;
        }
    }
}

/* The caller of the allocation: the first frame of its stack. */
static uint64_t alloc_caller(kasan_t *k, const struct obj *o)
{
    uint64_t f[1];
    return depot_get(k->rt, o->alloc_stack, f, 1) ? f[0] & RET_MASK : 0;
}

/* Unreached objects that count as roots anyway: made by code named in emsan_leaks_ignore_callers
 * (the dynamic linker's) or before main. */
static int root_anyway(struct emsan_leaks *l, const struct obj *o, int flags)
{
    if ((flags & EMSAN_LEAKS_IGNORE_BEFORE_MAIN) && l->main_seq && o->seq < l->main_seq) return 1;
    if (!l->ignore.n) return 0;
    uint64_t pc = alloc_caller(l->k, o);
    for (size_t i = 0; i + 1 < l->ignore.n; i += 2)
        if (pc >= l->ignore.v[i] && pc < l->ignore.v[i + 1]) return 1;
    return 0;
}

static int by_seq(const void *a, const void *b)
{
    uint32_t x = ((const struct white *)a)->seq, y = ((const struct white *)b)->seq;
    return x < y ? -1 : x > y;
}

/* Valgrind's cliques: in allocation order, an unreached object no earlier leader reached leads
 * a clique; everything unreached it reaches becomes indirect (an earlier leader too, whose
 * clique then joins this one). Counts cover objects not reported before. */
static void classify(struct emsan_leaks *l)
{
    kasan_t *k = l->k;
    struct scan_index *ix = &l->ix;
    for (size_t i = 0; i < l->nwhites; i++) ix->white[l->whites[i].slot] = (uint32_t)i + 1;
    uint32_t *stack = NULL;
    size_t n = 0, cap = 0;
    for (size_t li = 0; li < l->nwhites; li++) {
        struct white *lw = &l->whites[li];
        if (lw->indirect) continue;
        lw->leader = 1;
        stack = grow(stack, &cap, n + 1, sizeof *stack);
        stack[n++] = (uint32_t)li;
        while (n) {
            uint64_t h = l->whites[stack[--n]].handle;
            const struct obj *oh = obj_of(k, h);
            const uint64_t *w = (const uint64_t *)(k->host + (obj_addr(k, h) - k->base));
            for (size_t j = 0; j < oh->size / 8; j++) {
                uint64_t start;
                int64_t g = slot_of(l, w[j], &start);
                if (g < 0 || reached(ix, (uint64_t)g)) continue;
                uint32_t xi = ix->white[g] - 1;
                struct white *xw = &l->whites[xi];
                if (xi == li || xw->indirect) continue;
                const struct obj *o = obj_of(k, xw->handle);
                uint64_t own = o->leak & LEAK_REPORTED ? 0 : 1;
                lw->ind_count += own;
                lw->ind_bytes += own * o->size;
                xw->indirect = 1;
                if (xw->leader) {                      /* an earlier clique joins this one */
                    xw->leader = 0;
                    lw->ind_count += xw->ind_count;
                    lw->ind_bytes += xw->ind_bytes;
                    xw->ind_count = xw->ind_bytes = 0;
                } else {
                    stack = grow(stack, &cap, n + 1, sizeof *stack);
                    stack[n++] = xi;
                }
            }
        }
    }
    free(stack);
}

static uint32_t group_for(struct emsan_leaks *l, uint32_t stack, int indirect)
{
    for (size_t g = 0; g < l->ngroups; g++)      /* leaks come from few stacks */
        if (l->groups[g].stack == stack && l->groups[g].indirect == indirect) return (uint32_t)g;
    l->groups = grow(l->groups, &l->groups_cap, l->ngroups + 1, sizeof *l->groups);
    emsan_leak_group *g = &l->groups[l->ngroups];
    memset(g, 0, sizeof *g);
    g->stack = stack;
    g->indirect = indirect;
    return (uint32_t)l->ngroups++;
}

static uint64_t group_total(const emsan_leak_group *g) { return g->bytes + g->indirect_bytes; }

static int by_total(const void *a, const void *b)
{
    const emsan_leak_group *x = a, *y = b;
    if (x->indirect != y->indirect) return x->indirect - y->indirect;     /* direct ones first */
    uint64_t tx = group_total(x), ty = group_total(y);
    if (tx != ty) return tx > ty ? -1 : 1;
    return x->first_seq < y->first_seq ? -1 : x->first_seq > y->first_seq;
}

/* The guest's pointer to an object (tag modes: with its memory tag). */
static uint64_t guest_pointer(kasan_t *k, uint64_t handle)
{
    uint64_t addr = obj_addr(k, handle);
    int tag = k->tags ? tag_at(k, addr) : -1;
    return tag >= 0 ? addr | (uint64_t)tag << TAG_SHIFT : addr;
}

/* New leaks grouped by allocation stack: direct ones (with the indirect bytes under them),
 * then indirect ones; each group's first object (in allocation order) is its report. */
static void make_groups(struct emsan_leaks *l)
{
    kasan_t *k = l->k;
    l->ngroups = 0;
    for (size_t i = 0; i < l->nwhites; i++) {          /* in allocation order */
        struct white *w = &l->whites[i];
        struct obj *o = obj_of(k, w->handle);
        w->group = UINT32_MAX;
        if (o->leak & LEAK_REPORTED) continue;
        w->group = group_for(l, o->alloc_stack, w->indirect);
        emsan_leak_group *g = &l->groups[w->group];
        if (!g->count) {
            g->addr = guest_pointer(k, w->handle);
            g->size = o->size;
            g->first_seq = w->seq;
            g->jiffies = jiffies_of(l, w->seq);
            g->nhead = (uint32_t)(o->size < HEAD_BYTES ? o->size : HEAD_BYTES);
            memcpy(g->head, k->host + (obj_addr(k, w->handle) - k->base), g->nhead);
        }
        g->count++;
        g->bytes += o->size;
        g->indirect_count += w->ind_count;
        g->indirect_bytes += w->ind_bytes;
        if (l->main_seq == 0 || w->seq < l->main_seq) g->before_main++;
        if (w->indirect) { l->stats.indirect++; l->stats.indirect_bytes += o->size; }
        else { l->stats.leaked++; l->stats.leaked_bytes += o->size; }
    }
    /* order the groups, then list each group's objects (allocation order) */
    uint32_t *order = malloc((l->ngroups + 1) * sizeof *order);
    for (size_t g = 0; g < l->ngroups; g++) l->groups[g].id = (uint32_t)g;
    qsort(l->groups, l->ngroups, sizeof *l->groups, by_total);
    for (size_t g = 0; g < l->ngroups; g++) order[l->groups[g].id] = (uint32_t)g;
    free(l->group_start);
    l->group_start = calloc(l->ngroups + 1, sizeof *l->group_start);
    for (size_t i = 0; i < l->nwhites; i++)
        if (l->whites[i].group != UINT32_MAX) l->group_start[order[l->whites[i].group] + 1]++;
    for (size_t g = 0; g < l->ngroups; g++) l->group_start[g + 1] += l->group_start[g];
    size_t *fill = calloc(l->ngroups + 1, sizeof *fill);
    free(l->members);
    l->members = malloc((l->group_start[l->ngroups] + 1) * sizeof *l->members);
    for (size_t i = 0; i < l->nwhites; i++) {
        if (l->whites[i].group == UINT32_MAX) continue;
        uint32_t g = order[l->whites[i].group];
        l->members[l->group_start[g] + fill[g]++] = (uint32_t)i;
    }
    for (size_t g = 0; g < l->ngroups; g++) l->groups[g].id = (uint32_t)g;
    free(fill);
    free(order);
}

/* ---- the scan -------------------------------------------------------------------------------- */

EXPORT size_t emsan_leaks_scan(emsan_leaks *l, const uint64_t *ranges, size_t nranges, const uint64_t *words,
                               size_t nwords, int flags)
{
    kasan_t *k = l->k;
    uint64_t t0 = clock_ns(CLOCK_MONOTONIC), c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    l->stats.scans++;
    l->stats.objects = l->stats.root_bytes = l->stats.object_bytes = 0;
    l->stats.leaked = l->stats.leaked_bytes = l->stats.indirect = l->stats.indirect_bytes = 0;
    l->ngray = l->nbatch = 0;
    build_index(l);
    /* the roots, then everything they reach */
    mark_words(l, words, nwords);
    uint64_t *buf = malloc(CHUNK);
    for (size_t i = 0; i + 1 < 2 * nranges; i += 2) scan_guest(l, ranges[i], ranges[i + 1], buf);
    free(buf);
    drain_gray(l);
    collect_whites(l);
    /* objects that are roots although nothing reaches them */
    if (l->nwhites && (l->ignore.n || (flags & EMSAN_LEAKS_IGNORE_BEFORE_MAIN))) {
        for (size_t i = 0; i < l->nwhites; i++) {
            struct white *w = &l->whites[i];
            if (!reached(&l->ix, w->slot) && root_anyway(l, obj_of(k, w->handle), flags))
                push_gray(l, w->slot, obj_addr(k, w->handle) - k->base);
        }
        drain_gray(l);
        size_t kept = 0;
        for (size_t i = 0; i < l->nwhites; i++)
            if (!reached(&l->ix, l->whites[i].slot)) l->whites[kept++] = l->whites[i];
        l->nwhites = kept;
    }
    /* what is left leaked: direct or indirect, then grouped, and reported from now on */
    qsort(l->whites, l->nwhites, sizeof *l->whites, by_seq);
    classify(l);
    make_groups(l);
    for (size_t i = 0; i < l->nwhites; i++) obj_of(k, l->whites[i].handle)->leak |= LEAK_REPORTED;
    l->stats.scan_ns = clock_ns(CLOCK_MONOTONIC) - t0;
    l->stats.scan_cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
    l->stats.total_scan_ns += l->stats.scan_ns;
    return l->ngroups;
}

EXPORT size_t emsan_leaks_groups(emsan_leaks *l, emsan_leak_group *out, size_t max)
{
    size_t n = l->ngroups < max ? l->ngroups : max;
    memcpy(out, l->groups, n * sizeof *out);
    return n;
}

/* The objects of group g (allocation order): addresses as the guest has them, and sizes. */
EXPORT size_t emsan_leaks_members(emsan_leaks *l, size_t g, uint64_t *addrs, uint64_t *sizes, size_t max)
{
    if (g >= l->ngroups) return 0;
    size_t n = l->group_start[g + 1] - l->group_start[g];
    if (n > max) n = max;
    for (size_t i = 0; i < n; i++) {
        uint64_t h = l->whites[l->members[l->group_start[g] + i]].handle;
        addrs[i] = guest_pointer(l->k, h);
        sizes[i] = obj_of(l->k, h)->size;
    }
    return n;
}

EXPORT void emsan_leaks_get_stats(emsan_leaks *l, emsan_leak_stats *out)
{
    *out = l->stats;
    out->now_jiffies = now_ms(l);
}

/* ---- scans during the run ------------------------------------------------------------------ */

EXPORT void emsan_leaks_scan_every(emsan_leaks *l, uint64_t insns)
{
    l->interval = insns * 4;
    l->next_scan = l->code_bytes + l->interval;
}

/* UC_HOOK_BLOCK callback (user data: the scanner): stops the engine when a scan is due. */
EXPORT void emsan_leaks_block_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)address;
    struct emsan_leaks *l = ud;
    l->code_bytes += size;
    if (UNLIKELY(l->code_bytes >= l->next_scan)) {
        l->next_scan = l->code_bytes + l->interval;
        l->due = 1;
        emu_stop(uc);
    }
}

EXPORT int emsan_leaks_take_due(emsan_leaks *l)
{
    int due = l->due;
    l->due = 0;
    return due;
}
