/* Tag-based modes, after the kernel's SW_TAGS and HW_TAGS KASAN: one tag byte per 16-byte
 * granule in a host-side table, the pointer's tag in its top byte (arm64 Top-Byte-Ignore), a
 * check of the two on every access, and a ring of recent allocations and frees to classify
 * reports; hw-tags also emulates the MTE instructions Unicorn lacks (mte.c).
 *
 * Three ways to check (--checks): by default (inline, x86-64 hosts) translated code compares
 * the pointer tag the address keeps with a flat copy of the heap's tags (inline.c,
 * engine/patches/015). With mmio the engine's TLB sees the tagged address and maps each
 * (pointer tag, page) pair either straight to memory, when every granule of the page carries a
 * tag the pointer matches, or to a checking MMIO view of the heap for that tag (mmio.c): pages
 * with one tag run at plain speed. The third, a memory hook on every access, is also what
 * checks memory outside the heap that a guest tags itself (MTE instructions).
 *
 * Unicorn hands memory hooks the untagged address, so there the pointer tag comes from the
 * instruction's base register: Rn = insn[9:5] for every register-based load and store
 * (cached per PC), Xt for DC ZVA; PC-relative literal loads carry no tag. */
#include "tags.h"

/* Pages whose granules all carry one tag share one of these tables. */
static uint8_t shared_fill[256][TAGS_PER_PAGE];

__attribute__((constructor)) static void tags_init_fill(void)
{
    for (int t = 0; t < 256; t++) memset(shared_fill[t], t, TAGS_PER_PAGE);
}

static inline int page_shared(const uint8_t *p)
{
    return p == NULL || (p >= shared_fill[0] && p < shared_fill[0] + sizeof shared_fill);
}

/* The random stream of the tags (xorshift64*, never seeded 0). */
static void tags_reseed(kasan_t *k, uint64_t seed) { k->tags->rng = seed ? seed : 0x9E3779B97F4A7C15ULL; }

static int tags_init(kasan_t *k, uint64_t seed, int hw)
{
    struct tag_state *t = calloc(1, sizeof *t);
    k->tags = t;
    t->hw = hw;
    t->page = calloc(k->npages, sizeof *t->page);
    tags_reseed(k, seed);
    t->ring = calloc(RING_SIZE, sizeof *t->ring);
    for (size_t i = 0; i < PCC_SIZE; i++) t->pcc[i].pc = ~0ULL;
    return 1;
}

static int sw_tags_init(kasan_t *k, uint64_t seed) { return tags_init(k, seed, 0); }
static int hw_tags_init(kasan_t *k, uint64_t seed) { return tags_init(k, seed, 1); }

static void tags_destroy(kasan_t *k)
{
    struct tag_state *t = k->tags;
    if (!t) return;
    for (uint64_t i = 0; i < k->npages; i++) if (!page_shared(t->page[i])) free(t->page[i]);
    for (size_t i = 0; i < t->fp_cap; i++) free(t->fp[i].tags);
    free(t->fp); free(t->page); free(t->ring); free(t->saved_ring); free(t);
    k->tags = NULL;
}

/* xorshift64*, seeded from --seed: the kernel's prandom stand-in. */
uint64_t tag_rnd(struct tag_state *t)
{
    uint64_t x = t->rng;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    t->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* kasan_random_tag(): sw-tags 0x00..0xFD, hw-tags 0xF0..0xFD (arm64's KASAN_TAG_MIN). */
static uint8_t tag_random(kasan_t *k)
{
    uint64_t r = tag_rnd(k->tags) >> 32;
    return k->tags->hw ? (uint8_t)(0xF0 + r % 14) : (uint8_t)(r % 254);
}

/* ---- the tag table ---------------------------------------------------------------------------- */

static void tags_access_cb(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud);

/* --checks inline and mmio see heap pages only. Memory outside the heap that the guest tags
 * itself (MTE instructions, __hwasan_tag_memory on its stack) is checked by the memory hook from
 * then on; the TLB is flushed so that pages it mapped before take the hook's slow path. The hook
 * sees the heap's checking views at their physical addresses, outside the heap, and leaves them
 * to the views' own checks; inline, it leaves the heap to the engine's helpers, which check it
 * once a memory hook keeps translated code from doing so. */
static void check_outside_heap(kasan_t *k)
{
    size_t hh;
    void *uc = k->rt->uc;
    if (emsan_hook_add(uc, &hh, ENGINE_HOOK_MEM_READ | ENGINE_HOOK_MEM_WRITE, (void *)tags_access_cb, k, 1, 0) == 0)
        tlb_flush(uc);
}

static struct foreign_page *foreign_find(kasan_t *k, uint64_t page, int create)
{
    struct tag_state *t = k->tags;
    if (create && (t->fp_n + 1) * 2 > t->fp_cap) {
        size_t ncap = t->fp_cap ? t->fp_cap * 2 : 64;
        struct foreign_page *nf = calloc(ncap, sizeof *nf);
        for (size_t i = 0; i < t->fp_cap; i++) {
            if (!t->fp[i].tags) continue;
            size_t j = (t->fp[i].page * 0x9E3779B97F4A7C15ULL >> 20) & (ncap - 1);
            while (nf[j].tags) j = (j + 1) & (ncap - 1);
            nf[j] = t->fp[i];
        }
        free(t->fp);
        t->fp = nf;
        t->fp_cap = ncap;
    }
    if (!t->fp_cap) return NULL;
    size_t j = (page * 0x9E3779B97F4A7C15ULL >> 20) & (t->fp_cap - 1);
    for (; t->fp[j].tags; j = (j + 1) & (t->fp_cap - 1))
        if (t->fp[j].page == page) return &t->fp[j];
    if (!create) return NULL;
    if (!t->fp_n && (k->mm || k->il)) check_outside_heap(k);
    t->fp[j].page = page;
    t->fp[j].tags = malloc(TAGS_PER_PAGE);
    memset(t->fp[j].tags, 0xF0, TAGS_PER_PAGE);          /* MTE: untouched memory has tag 0 */
    t->fp_n++;
    return &t->fp[j];
}

/* Set the tags of [addr, addr+len) (untagged, granule aligned). */
void tag_set(kasan_t *k, uint64_t addr, uint64_t len, uint8_t tag)
{
    struct tag_state *t = k->tags;
    uint64_t end = addr + len;
    while (addr < end) {
        uint64_t page_end = (addr | (PAGE_SIZE - 1)) + 1;
        uint64_t stop = end < page_end ? end : page_end;
        uint64_t off = addr - k->base;
        if (off < k->size) {
            uint64_t pg = off >> PAGE_SHIFT;
            uint8_t *p = t->page[pg];
            if (k->mm) mmio_poisoned(k, addr, stop - addr);     /* the TLB's view of the page changes */
            if (k->il) inline_fill(k, addr, stop - addr, tag);
            if ((addr & (PAGE_SIZE - 1)) == 0 && stop == page_end) {
                if (!page_shared(p)) { free(p); t->private_pages--; }
                t->page[pg] = tag == TAG_INVALID ? NULL : shared_fill[tag];
            } else {
                if (page_shared(p)) {
                    uint8_t *np = malloc(TAGS_PER_PAGE);
                    memcpy(np, p ? p : shared_fill[TAG_INVALID], TAGS_PER_PAGE);
                    t->page[pg] = p = np;
                    t->private_pages++;
                }
                memset(p + ((addr & (PAGE_SIZE - 1)) >> 4), tag, (stop - addr) >> 4);
            }
        } else {
            struct foreign_page *f = foreign_find(k, addr >> PAGE_SHIFT, 1);
            memset(f->tags + ((addr & (PAGE_SIZE - 1)) >> 4), tag, (stop - addr) >> 4);
        }
        addr = stop;
    }
}

int tag_at(kasan_t *k, uint64_t addr)
{
    struct tag_state *t = k->tags;
    addr &= UNTAG_MASK;
    uint64_t off = addr - k->base;
    if (off < k->size) {
        const uint8_t *p = t->page[off >> PAGE_SHIFT];
        return p ? p[(off & (PAGE_SIZE - 1)) >> 4] : TAG_INVALID;
    }
    if (!t->fp_n) return -1;
    struct foreign_page *f = foreign_find(k, addr >> PAGE_SHIFT, 0);
    return f ? f->tags[(addr & (PAGE_SIZE - 1)) >> 4] : -1;
}

EXPORT int emsan_tag_at(emsan_kasan *k, uint64_t addr) { return k->tags ? tag_at(k, addr) : -1; }

/* 0xFF pointers match everything; hw-tags compares the 4 bits MTE stores. */
int tag_matches(kasan_t *k, uint8_t ptr_tag, uint8_t mem_tag)
{
    if (ptr_tag == TAG_KERNEL) return 1;
    if (k->tags->hw) return (ptr_tag & 0xF) == (mem_tag & 0xF);
    return ptr_tag == mem_tag;
}

/* Does any granule of [tagged, tagged+size) carry a tag the pointer does not match? */
static int tag_bad(kasan_t *k, uint64_t tagged, uint64_t size)
{
    uint8_t ptag = (uint8_t)(tagged >> TAG_SHIFT);
    uint64_t a = tagged & UNTAG_MASK;
    if (!size) return 0;
    uint64_t last = a + size - 1;
    if (last < a) return 1;
    for (uint64_t g = a & ~(uint64_t)(TAG_GRANULE - 1); g <= last; g += TAG_GRANULE) {
        int mt = tag_at(k, g);
        if (mt >= 0 && !tag_matches(k, ptag, (uint8_t)mt)) return 1;
        if (g + TAG_GRANULE < g) break;
    }
    return 0;
}

/* --checks mmio: may pointers with tag ptag reach heap page `page` without a check (every
 * granule carries a tag they match)? */
int tags_page_matches(kasan_t *k, uint64_t page, uint8_t ptag)
{
    struct tag_state *t = k->tags;
    if (ptag == TAG_KERNEL) return 1;
    const uint8_t *p = t->page[page];
    if (page_shared(p)) return tag_matches(k, ptag, p ? p[0] : TAG_INVALID);
    if (!t->hw) return memcmp(p, shared_fill[ptag], TAGS_PER_PAGE) == 0;
    for (unsigned i = 0; i < TAGS_PER_PAGE; i++)
        if ((p[i] ^ ptag) & 0xF) return 0;
    return 1;
}

/* --checks mmio: the check of a piece of an access to the heap seen by a tag's view. */
int tags_access_bad(kasan_t *k, uint64_t tagged, uint64_t size)
{
    uint64_t off = (tagged & UNTAG_MASK) - k->base;
    if (LIKELY((off & (TAG_GRANULE - 1)) + size <= TAG_GRANULE)) {
        const uint8_t *p = k->tags->page[off >> PAGE_SHIFT];
        uint8_t mt = p ? p[(off & (PAGE_SIZE - 1)) >> 4] : TAG_INVALID;
        return !tag_matches(k, (uint8_t)(tagged >> TAG_SHIFT), mt);
    }
    return tag_bad(k, tagged, size);
}

/* The first granule of an access whose tag the pointer does not match (kasan_find_first_bad_addr). */
static uint64_t tag_first_bad(kasan_t *k, uint64_t tagged, uint64_t size)
{
    uint8_t ptag = (uint8_t)(tagged >> TAG_SHIFT);
    uint64_t a = tagged & UNTAG_MASK;
    uint64_t n = size > (1ULL << 32) ? 1ULL << 32 : size;
    for (uint64_t g = a; g < a + n; g = (g & ~(uint64_t)(TAG_GRANULE - 1)) + TAG_GRANULE) {
        int mt = tag_at(k, g);
        if (mt >= 0 && !tag_matches(k, ptag, (uint8_t)mt)) return g;
    }
    return a;
}

/* ---- the stack ring (the kernel's save_stack_info()) --------------------------------------------- */

static void tags_save_track(kasan_t *k, uint64_t tagged, uint64_t size, uint64_t cache_size, uint32_t stack,
                            int is_free)
{
    struct tag_state *t = k->tags;
    struct ring_entry *e = &t->ring[t->ring_pos++ % RING_SIZE];
    e->ptr = tagged; e->size = size; e->cache_size = cache_size; e->stack = stack; e->is_free = (uint8_t)is_free;
    e->tid = k->rt->tid;
}

/* kasan_complete_mode_report_info(): walk the ring backwards for records of the object at the
 * address with the pointer's tag; a free found first means use-after-free, an allocation
 * out-of-bounds, nothing an invalid access. The object's own allocation and free stacks are
 * not shown: only what the ring holds for this pointer. */
static void tags_describe(kasan_t *k, uint64_t tagged, uint64_t size, emsan_obj_info *out)
{
    struct tag_state *t = k->tags;
    out->first_bad = tag_first_bad(k, tagged, size);
    out->mem_tag = tag_at(k, out->first_bad);
    out->alloc_stack = out->free_stack = 0;
    out->alloc_tid = out->free_tid = 0;
    if (!out->found) {
        out->tag_bug = EMSAN_TAGBUG_INVALID;
        return;
    }
    out->size = out->cache_size;
    out->state = EMSAN_OBJ_LIVE;
    uint8_t ptag = (uint8_t)(tagged >> TAG_SHIFT);
    int alloc_found = 0, free_found = 0;
    uint64_t n = t->ring_pos < RING_SIZE ? t->ring_pos : RING_SIZE;
    for (uint64_t i = 1; i <= n; i++) {
        struct ring_entry *e = &t->ring[(t->ring_pos - i) % RING_SIZE];
        if ((e->ptr & UNTAG_MASK) != out->start || (uint8_t)(e->ptr >> TAG_SHIFT) != ptag ||
            e->cache_size != out->cache_size)
            continue;
        if (e->is_free) {
            if (free_found) break;       /* a second free of the object: stop looking */
            free_found = 1;
            out->free_stack = e->stack;
            out->free_tid = e->tid;
            out->state = EMSAN_OBJ_QUARANTINED;
            if (!out->tag_bug) out->tag_bug = EMSAN_TAGBUG_UAF;
        } else {
            if (alloc_found) break;
            alloc_found = 1;
            out->alloc_stack = e->stack;
            out->alloc_tid = e->tid;
            out->size = e->size;
            if (!out->tag_bug) out->tag_bug = EMSAN_TAGBUG_OOB;
        }
        if (free_found && alloc_found) break;
    }
    if (!out->tag_bug) out->tag_bug = EMSAN_TAGBUG_INVALID;
}

/* ---- a persistent loop's rollback (checkpoint.c) ------------------------------------------------- */

static uint8_t tags_state_at(kasan_t *k, uint64_t addr)
{
    int t = tag_at(k, addr);
    return t < 0 ? TAG_INVALID : (uint8_t)t;
}

/* The stack ring as it was: records written since would tell a report about an object the
 * rollback made live again that it was freed. */
static void tags_checkpoint(kasan_t *k, int restore)
{
    struct tag_state *t = k->tags;
    if (!restore) {
        if (!t->saved_ring) t->saved_ring = malloc(RING_SIZE * sizeof *t->saved_ring);
        memcpy(t->saved_ring, t->ring, RING_SIZE * sizeof *t->ring);
        t->saved_pos = t->ring_pos;
        return;
    }
    for (uint64_t p = t->saved_pos; p < t->ring_pos && p - t->saved_pos < RING_SIZE; p++)
        t->ring[p % RING_SIZE] = t->saved_ring[p % RING_SIZE];
    t->ring_pos = t->saved_pos;
}

EXPORT void emsan_tag_stats(emsan_kasan *k, uint64_t *out)
{
    out[0] = k->tags->private_pages;
    out[1] = k->tags->mte_traps;
    out[2] = k->tags->fp_n;
    out[3] = k->tags->ring_pos;
}

/* ---- the per-access check ----------------------------------------------------------------------- */

/* The register an instruction takes its address from: Rn for loads and stores (31 = SP),
 * Xt for DC ZVA; -1 when there is none (literal loads, or not a memory instruction).
 * *rm: the index register of register-offset forms, else -1. */
static int decode_base(uint32_t i, int *rm)
{
    *rm = -1;
    if ((i & 0x0A000000) == 0x08000000) {              /* the load/store encoding group */
        if ((i & 0x3B000000) == 0x18000000) return -1;   /* LDR/PRFM (literal): PC-relative */
        if ((i & 0x3B200C00) == 0x38200800) *rm = (int)((i >> 16) & 31);   /* [Xn, Xm{, ext}] */
        return (int)((i >> 5) & 31);
    }
    if ((i & 0xFFFFFFE0) == 0xD50B7420 && (i & 31) != 31) return (int)(i & 31);   /* DC ZVA, Xt */
    return -1;
}

static inline struct pc_rn *pc_info(kasan_t *k, uint64_t pc)
{
    struct pc_rn *c = &k->tags->pcc[(pc >> 2) & (PCC_SIZE - 1)];
    if (UNLIKELY(c->pc != pc)) {
        uint32_t insn = 0;
        int rm = -1;
        c->rn = mem_get(k->rt->uc, pc, &insn, 4) ? -1 : decode_base(insn, &rm);
        c->rm = rm;
        c->pc = pc;
    }
    return c;
}

/* The pointer an access went through: the base register, or the index register when that is
 * the one pointing near the address (code may index an untagged base with a pointer). */
static inline uint64_t access_pointer(kasan_t *k, const struct pc_rn *c, uint64_t addr)
{
    uint64_t p = xreg(k, c->rn);
    if (UNLIKELY(c->rm >= 0 && c->rm != 31)) {
        uint64_t d = (p & UNTAG_MASK) - addr;
        if (d + (1ULL << 32) > (2ULL << 32)) {         /* the base is far from the address */
            uint64_t q = xreg(k, c->rm);
            if (((q & UNTAG_MASK) - addr) + (1ULL << 32) <= (2ULL << 32)) return q;
        }
    }
    return p;
}

static void tags_access_cb(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    (void)value;
    kasan_t *k = ud;
    struct tag_state *t = k->tags;
    uint64_t off = addr - k->base;
    int mt;
    if (LIKELY(off < k->size)) {
        if (k->il) return;                             /* the engine's check (inline.c) */
        const uint8_t *p = t->page[off >> PAGE_SHIFT];
        mt = p ? p[(off & (PAGE_SIZE - 1)) >> 4] : TAG_INVALID;
    } else if (LIKELY(!t->fp_n)) {
        return;                                        /* no tags outside the heap */
    } else if ((mt = tag_at(k, addr)) < 0) {
        return;
    }
    rt_t *rt = k->rt;
    uint64_t pc = reg_get(uc, rt->regs[EMSAN_REG_PC]);
    const struct pc_rn *c = pc_info(k, pc);
    if (c->rn < 0) return;
    uint64_t ptr = access_pointer(k, c, addr);
    uint8_t ptag = (uint8_t)(ptr >> TAG_SHIFT);
    uint64_t tagged = ((uint64_t)ptag << TAG_SHIFT) | addr;
    if (LIKELY(tag_matches(k, ptag, (uint8_t)mt))) {
        if (LIKELY((addr & (TAG_GRANULE - 1)) + (uint64_t)size <= TAG_GRANULE)) return;
        if (!tag_bad(k, tagged, (uint64_t)size)) return;  /* the access spans granules */
    }
    int is_write = type == ENGINE_MEM_WRITE;
    if (!is_write && read_ahead(k, pc, tagged, (uint64_t)size)) return;
    if (call_quiet(k, tagged, (uint64_t)size, is_write)) return;     /* a libc call's own (libc.c) */
    report_error(rt, EMSAN_ERR_ACCESS, tagged, (uint64_t)size, is_write, pc, stack_here(rt, pc, 0), 0, 0);
}

/* ---- the mode's operations ---------------------------------------------------------------------- */

static uint32_t tags_redzone(uint32_t object_size) { (void)object_size; return 0; }

/* Every poison value is the invalid tag (free memory, slab space no object owns). */
static void tags_poison(kasan_t *k, uint64_t addr, uint64_t len, uint8_t value)
{
    (void)value;
    tag_set(k, addr, len, TAG_INVALID);
}

/* One call tags the whole object with a new random tag: its size rounded up to granules; the
 * rest up to poison_to stays invalid. */
static uint64_t tags_unpoison(kasan_t *k, uint64_t addr, uint64_t size, uint64_t poison_to, uint8_t rz)
{
    (void)rz;
    uint8_t tag = tag_random(k);
    uint64_t used = round_up(size, TAG_GRANULE);
    tag_set(k, addr, used, tag);
    if (poison_to > addr + used) tag_set(k, addr + used, poison_to - addr - used, TAG_INVALID);
    return addr | ((uint64_t)tag << TAG_SHIFT);
}

/* The kernel's kasan_byte_accessible() in tag modes: the pointer's tag matches the memory's,
 * and the memory is not free. */
static int tags_accessible(kasan_t *k, const struct obj *o, uint64_t tagged)
{
    (void)o;
    int mt = tag_at(k, tagged);
    return mt >= 0 && mt != TAG_INVALID && tag_matches(k, (uint8_t)(tagged >> TAG_SHIFT), (uint8_t)mt);
}

/* Tag memory on a guest's request: __hwasan_tag_memory(p, tag, size), the HWASan interface. */
static void tags_tag_memory(kasan_t *k, uint64_t addr, uint8_t tag, uint64_t size)
{
    uint64_t a = (addr & UNTAG_MASK) & ~(uint64_t)(TAG_GRANULE - 1);
    uint64_t end = ((addr & UNTAG_MASK) + size + TAG_GRANULE - 1) & ~(uint64_t)(TAG_GRANULE - 1);
    if (end > a) tag_set(k, a, end - a, tag);
}

#define TAG_OPS(init_fn)                                                                           \
    {                                                                                                \
        .granule = TAG_GRANULE, .quarantine = 0, .init = init_fn, .destroy = tags_destroy,         \
        .redzone = tags_redzone, .poison = tags_poison, .unpoison = tags_unpoison,                 \
        .accessible = tags_accessible, .range_bad = tag_bad, .save_track = tags_save_track,        \
        .describe = tags_describe, .tag_memory = tags_tag_memory, .access_cb = tags_access_cb,     \
        .state_at = tags_state_at, .set_state = tag_set, .checkpoint = tags_checkpoint,              \
        .reseed = tags_reseed,                                                                       \
    }
const struct kasan_ops kasan_sw_tags_ops = TAG_OPS(sw_tags_init);
const struct kasan_ops kasan_hw_tags_ops = TAG_OPS(hw_tags_init);
