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

/* struct obj's leak flags */
#define LEAK_SEEN 1            /* reached in this scan */
#define LEAK_REPORTED 2        /* reported by an earlier scan */
#define LEAK_LEADER 4          /* unreached and reported directly */
#define LEAK_INDIRECT 8        /* unreached, reachable from a leader */

#define CHUNK (64 << 10)       /* guest memory read per engine call */
#define HEAD_BYTES 32          /* bytes of a group's first object kept for its hex dump */

struct white {                 /* an unreached object during classification */
    uint64_t handle;
    uint32_t seq;
    uint32_t leader;           /* index of the leader it was reached from */
    uint64_t ind_count, ind_bytes;
    uint32_t group;
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
    struct vec64 gray;         /* handles reached and not scanned yet */
    /* the last scan's leaks (not seen before), grouped by allocation stack */
    struct white *whites; size_t nwhites, whites_cap;
    uint32_t *index; size_t index_size;          /* handle hash -> whites index + 1 */
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

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Called for every allocation (heap.c): a fresh object has no leak flags, and its number. */
void leak_note_alloc(kasan_t *k, struct obj *o)
{
    o->leak = 0;
    o->seq = (uint32_t)k->stats.allocs;
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
    clock_gettime(CLOCK_MONOTONIC_COARSE, &l->t0);
    l->last_ms = UINT64_MAX;
    k->leaks = l;
    return l;
}

void leak_destroy(kasan_t *k)
{
    struct emsan_leaks *l = k->leaks;
    if (!l) return;
    free(l->ticks.v); free(l->ignore.v); free(l->gray.v);
    free(l->whites); free(l->index); free(l->groups); free(l->members); free(l->group_start);
    free(l);
    k->leaks = NULL;
}

EXPORT void emsan_leaks_main_started(emsan_leaks *l) { l->main_seq = (uint32_t)l->k->stats.allocs + 1; }

EXPORT void emsan_leaks_ignore_callers(emsan_leaks *l, uint64_t lo, uint64_t hi)
{
    vec_push(&l->ignore, lo);
    vec_push(&l->ignore, hi);
}

/* ---- marking ------------------------------------------------------------------------------- */

/* The live object a word points at or into (kmemleak's lookup with aliases), or -1. A zero-
 * sized object is referenced by its address. */
static inline int64_t object_of(kasan_t *k, uint64_t p)
{
    if (k->rt->arm64) p &= UNTAG_MASK;
    uint64_t off = p - k->base;
    if ((off >> PAGE_SHIFT) >= k->bump) return -1;        /* below the heap: wraps, also above */
    uint32_t sid = k->page_slab[off >> PAGE_SHIFT];
    if (!sid) return -1;
    struct slab *s = &k->slabs[sid - 1];
    uint64_t rel = p - s->first, idx = 0;
    if (s->cls != LARGE_CLASS) {
        idx = rel / s->slot;
        if (idx >= s->nobj) return -1;                     /* the slab's leading redzone, or its tail */
        rel -= idx * s->slot;
    }
    struct obj *o = &s->objs[idx];
    if (o->state != EMSAN_OBJ_LIVE || rel >= (o->size ? o->size : 1)) return -1;
    return (int64_t)(((uint64_t)(sid - 1) << 24) | idx);
}

static inline void mark(struct emsan_leaks *l, uint64_t word)
{
    int64_t h = object_of(l->k, word);
    if (h < 0) return;
    struct obj *o = obj_of(l->k, (uint64_t)h);
    if (o->leak & LEAK_SEEN) return;
    o->leak |= LEAK_SEEN;
    vec_push(&l->gray, (uint64_t)h);
}

static void mark_words(struct emsan_leaks *l, const uint64_t *w, size_t n)
{
    for (size_t i = 0; i < n; i++) mark(l, w[i]);
}

/* An object's own memory, word by word (words wholly inside it, as kmemleak's scan_block). */
static inline const uint64_t *object_words(kasan_t *k, uint64_t handle, size_t *n)
{
    *n = obj_of(k, handle)->size / 8;
    return (const uint64_t *)(k->host + (obj_addr(k, handle) - k->base));
}

static void drain_gray(struct emsan_leaks *l)
{
    kasan_t *k = l->k;
    while (l->gray.n) {
        uint64_t h = l->gray.v[--l->gray.n];
        size_t n;
        const uint64_t *w = object_words(k, h, &n);
        mark_words(l, w, n);
        l->stats.object_bytes += n * 8;
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

static void clear_flags(kasan_t *k, uint64_t h, struct obj *o, void *ctx)
{
    (void)k; (void)h;
    o->leak &= LEAK_REPORTED;
    ((struct emsan_leaks *)ctx)->stats.objects++;
}

static void collect_white(kasan_t *k, uint64_t h, struct obj *o, void *ctx)
{
    (void)k;
    struct emsan_leaks *l = ctx;
    if (o->leak & LEAK_SEEN) return;
    if (l->nwhites == l->whites_cap) {
        l->whites_cap = l->whites_cap ? l->whites_cap * 2 : 256;
        l->whites = realloc(l->whites, l->whites_cap * sizeof *l->whites);
    }
    struct white *w = &l->whites[l->nwhites++];
    memset(w, 0, sizeof *w);
    w->handle = h;
    w->seq = o->seq;
}

/* The caller of the allocation: the first frame of its stack. */
static uint64_t alloc_caller(kasan_t *k, const struct obj *o)
{
    uint64_t f[1];
    return depot_get(k->rt, o->alloc_stack, f, 1) ? f[0] & RET_MASK : 0;
}

/* Unreached objects that count as roots anyway: made by code named in emsan_leaks_ignore_callers
 * (ld.so's TLS blocks, which glibc reaches only through a pointer it hides) or before main. */
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

static inline uint32_t hash_handle(uint64_t h) { return (uint32_t)((h * 0x9E3779B97F4A7C15ULL) >> 32); }

static void index_whites(struct emsan_leaks *l)
{
    size_t size = 64;
    while (size < l->nwhites * 2) size *= 2;
    if (size > l->index_size) {
        free(l->index);
        l->index = malloc(size * sizeof *l->index);
        l->index_size = size;
    }
    memset(l->index, 0, l->index_size * sizeof *l->index);
    for (size_t i = 0; i < l->nwhites; i++) {
        size_t j = hash_handle(l->whites[i].handle) & (l->index_size - 1);
        while (l->index[j]) j = (j + 1) & (l->index_size - 1);
        l->index[j] = (uint32_t)i + 1;
    }
}

static struct white *white_of(struct emsan_leaks *l, uint64_t h)
{
    for (size_t j = hash_handle(h) & (l->index_size - 1); l->index[j]; j = (j + 1) & (l->index_size - 1))
        if (l->whites[l->index[j] - 1].handle == h) return &l->whites[l->index[j] - 1];
    return NULL;
}

/* Valgrind's cliques: in allocation order, an unreached object no earlier leader reached leads
 * a clique; everything unreached it reaches becomes indirect (an earlier leader too, whose
 * clique then joins this one). Counts cover objects not reported before. */
static void classify(struct emsan_leaks *l)
{
    kasan_t *k = l->k;
    for (size_t li = 0; li < l->nwhites; li++) {
        struct white *lw = &l->whites[li];
        struct obj *lo = obj_of(k, lw->handle);
        if (lo->leak & LEAK_INDIRECT) continue;
        lo->leak |= LEAK_LEADER;
        lw->leader = (uint32_t)li;
        vec_push(&l->gray, lw->handle);
        while (l->gray.n) {
            uint64_t h = l->gray.v[--l->gray.n];
            size_t n;
            const uint64_t *w = object_words(k, h, &n);
            for (size_t i = 0; i < n; i++) {
                int64_t x = object_of(k, w[i]);
                if (x < 0 || (uint64_t)x == lw->handle) continue;
                struct obj *o = obj_of(k, (uint64_t)x);
                if (o->leak & (LEAK_SEEN | LEAK_INDIRECT)) continue;
                struct white *xw = white_of(l, (uint64_t)x);
                if (!xw) continue;
                uint64_t own = o->leak & LEAK_REPORTED ? 0 : 1;
                lw->ind_count += own;
                lw->ind_bytes += own * o->size;
                if (o->leak & LEAK_LEADER) {               /* an earlier clique joins this one */
                    lw->ind_count += xw->ind_count;
                    lw->ind_bytes += xw->ind_bytes;
                    xw->ind_count = xw->ind_bytes = 0;
                    o->leak = (uint8_t)((o->leak & ~LEAK_LEADER) | LEAK_INDIRECT);
                } else {
                    o->leak |= LEAK_INDIRECT;
                    vec_push(&l->gray, (uint64_t)x);
                }
                xw->leader = (uint32_t)li;
            }
        }
    }
}

static uint32_t group_for(struct emsan_leaks *l, uint32_t stack, int indirect)
{
    for (size_t g = 0; g < l->ngroups; g++)      /* leaks come from few stacks */
        if (l->groups[g].stack == stack && l->groups[g].indirect == indirect) return (uint32_t)g;
    if (l->ngroups == l->groups_cap) {
        l->groups_cap = l->groups_cap ? l->groups_cap * 2 : 16;
        l->groups = realloc(l->groups, l->groups_cap * sizeof *l->groups);
    }
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
        int indirect = !(o->leak & LEAK_LEADER);
        w->group = group_for(l, o->alloc_stack, indirect);
        emsan_leak_group *g = &l->groups[w->group];
        if (!g->count) {
            uint64_t addr = obj_addr(k, w->handle);
            int tag = k->tags ? tag_at(k, addr) : -1;
            g->addr = tag >= 0 ? addr | (uint64_t)tag << TAG_SHIFT : addr;
            g->size = o->size;
            g->first_seq = w->seq;
            g->jiffies = jiffies_of(l, w->seq);
            g->nhead = (uint32_t)(o->size < HEAD_BYTES ? o->size : HEAD_BYTES);
            memcpy(g->head, k->host + (addr - k->base), g->nhead);
        }
        g->count++;
        g->bytes += o->size;
        g->indirect_count += w->ind_count;
        g->indirect_bytes += w->ind_bytes;
        if (l->main_seq == 0 || w->seq < l->main_seq) g->before_main++;
        if (indirect) { l->stats.indirect++; l->stats.indirect_bytes += o->size; }
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
    uint64_t t0 = now_ns();
    l->stats.scans++;
    l->stats.objects = l->stats.root_bytes = l->stats.object_bytes = 0;
    l->stats.leaked = l->stats.leaked_bytes = l->stats.indirect = l->stats.indirect_bytes = 0;
    l->gray.n = 0;
    l->nwhites = 0;
    for_each_live_object(k, clear_flags, l);
    /* the roots, then everything they reach */
    mark_words(l, words, nwords);
    uint64_t *buf = malloc(CHUNK);
    for (size_t i = 0; i + 1 < 2 * nranges; i += 2) scan_guest(l, ranges[i], ranges[i + 1], buf);
    free(buf);
    drain_gray(l);
    /* objects that are roots although nothing reaches them */
    for_each_live_object(k, collect_white, l);
    if (l->ignore.n || (flags & EMSAN_LEAKS_IGNORE_BEFORE_MAIN)) {
        size_t kept = 0;
        for (size_t i = 0; i < l->nwhites; i++) {
            struct obj *o = obj_of(k, l->whites[i].handle);
            if (root_anyway(l, o, flags)) {
                o->leak |= LEAK_SEEN;
                vec_push(&l->gray, l->whites[i].handle);
            }
        }
        drain_gray(l);
        for (size_t i = 0; i < l->nwhites; i++)
            if (!(obj_of(k, l->whites[i].handle)->leak & LEAK_SEEN)) l->whites[kept++] = l->whites[i];
        l->nwhites = kept;
    }
    /* what is left leaked: direct or indirect, then grouped, and reported from now on */
    qsort(l->whites, l->nwhites, sizeof *l->whites, by_seq);
    index_whites(l);
    classify(l);
    make_groups(l);
    for (size_t i = 0; i < l->nwhites; i++) obj_of(k, l->whites[i].handle)->leak |= LEAK_REPORTED;
    l->stats.scan_ns = now_ns() - t0;
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
    kasan_t *k = l->k;
    size_t n = l->group_start[g + 1] - l->group_start[g];
    if (n > max) n = max;
    for (size_t i = 0; i < n; i++) {
        uint64_t h = l->whites[l->members[l->group_start[g] + i]].handle;
        uint64_t addr = obj_addr(k, h);
        int tag = k->tags ? tag_at(k, addr) : -1;
        addrs[i] = tag >= 0 ? addr | (uint64_t)tag << TAG_SHIFT : addr;
        sizes[i] = obj_of(k, h)->size;
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
