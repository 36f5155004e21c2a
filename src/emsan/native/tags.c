/* Tag-based modes, after the kernel's SW_TAGS and HW_TAGS KASAN (mm/kasan/tags.c,
 * report_tags.c): one tag byte per 16-byte granule in a host-side table, the pointer's tag in
 * its top byte (arm64 Top-Byte-Ignore), a check of the two on every access, a ring of recent
 * allocations and frees to classify reports, and, for hw-tags, emulation of the MTE
 * instructions Unicorn does not implement.
 *
 * Unicorn hands memory hooks the untagged address, so the pointer tag comes from the
 * instruction's base register: Rn = insn[9:5] for every register-based load and store
 * (cached per PC), Xt for DC ZVA; PC-relative literal loads carry no tag. */
#include "internal.h"

#define RING_SIZE 32768                  /* kasan.stack_ring_size default */
#define PCC_SIZE 4096
#define TAGS_PER_PAGE (PAGE_SIZE / TAG_GRANULE)
#define MTE_BLOCK 256                    /* LDGM/STGM block: GMID_EL1.BS = 6 (64 words), as QEMU */

struct ring_entry {
    uint64_t ptr;                        /* tagged */
    uint64_t size;                       /* requested size */
    uint64_t cache_size;                 /* the kernel's entry->size (cache->object_size) */
    uint32_t stack;
    uint8_t is_free;
};

struct pc_rn { uint64_t pc; int32_t rn; int32_t rm; };
struct foreign_page { uint64_t page; uint8_t *tags; };

struct tag_state {
    uint8_t **page;                      /* per heap page: tags of its 256 granules; NULL = invalid */
    uint64_t rng;
    int xregs[32];                       /* Unicorn ids of X0..X30 and SP */
    struct ring_entry *ring;
    uint64_t ring_pos;
    struct pc_rn pcc[PCC_SIZE];
    struct foreign_page *fp;             /* tags set by guest MTE instructions outside the heap */
    size_t fp_cap, fp_n;
    uint64_t private_pages, mte_traps;
};

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

EXPORT void emsan_tags_init(emsan_heap *h, int mode, uint64_t seed, const int *xregs)
{
    struct tag_state *t = calloc(1, sizeof *t);
    t->page = calloc(h->npages, sizeof *t->page);
    t->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    memcpy(t->xregs, xregs, sizeof t->xregs);
    t->ring = calloc(RING_SIZE, sizeof *t->ring);
    for (size_t i = 0; i < PCC_SIZE; i++) t->pcc[i].pc = ~0ULL;
    h->tags = t;
    h->tag_mode = mode;
}

void tags_destroy(heap_t *h)
{
    struct tag_state *t = h->tags;
    if (!t) return;
    for (uint64_t i = 0; i < h->npages; i++) if (!page_shared(t->page[i])) free(t->page[i]);
    for (size_t i = 0; i < t->fp_cap; i++) free(t->fp[i].tags);
    free(t->fp); free(t->page); free(t->ring); free(t);
    h->tags = NULL;
}

/* xorshift64*, seeded from --seed: the kernel's prandom stand-in. */
static uint64_t rnd(struct tag_state *t)
{
    uint64_t x = t->rng;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    t->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* kasan_random_tag(): sw-tags 0x00..0xFD, hw-tags 0xF0..0xFD (arm64 KASAN_TAG_MIN). */
uint8_t tag_random(heap_t *h)
{
    uint64_t r = rnd(h->tags) >> 32;
    return h->tag_mode == EMSAN_TAGS_HW ? (uint8_t)(0xF0 + r % 14) : (uint8_t)(r % 254);
}

/* ---- the tag table ---------------------------------------------------------------------------- */

static struct foreign_page *foreign_find(struct tag_state *t, uint64_t page, int create)
{
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
    t->fp[j].page = page;
    t->fp[j].tags = malloc(TAGS_PER_PAGE);
    memset(t->fp[j].tags, 0xF0, TAGS_PER_PAGE);          /* MTE: untouched memory has tag 0 */
    t->fp_n++;
    return &t->fp[j];
}

/* Set the tags of [addr, addr+len) (untagged, granule aligned). */
void tag_set(heap_t *h, uint64_t addr, uint64_t len, uint8_t tag)
{
    struct tag_state *t = h->tags;
    uint64_t end = addr + len;
    while (addr < end) {
        uint64_t page_end = (addr | (PAGE_SIZE - 1)) + 1;
        uint64_t stop = end < page_end ? end : page_end;
        uint64_t off = addr - h->base;
        if (off < h->size) {
            uint64_t pg = off >> PAGE_SHIFT;
            uint8_t *p = t->page[pg];
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
            struct foreign_page *f = foreign_find(t, addr >> PAGE_SHIFT, 1);
            memset(f->tags + ((addr & (PAGE_SIZE - 1)) >> 4), tag, (stop - addr) >> 4);
        }
        addr = stop;
    }
}

int tag_at(heap_t *h, uint64_t addr)
{
    struct tag_state *t = h->tags;
    addr &= UNTAG_MASK;
    uint64_t off = addr - h->base;
    if (off < h->size) {
        const uint8_t *p = t->page[off >> PAGE_SHIFT];
        return p ? p[(off & (PAGE_SIZE - 1)) >> 4] : TAG_INVALID;
    }
    if (!t->fp_n) return -1;
    struct foreign_page *f = foreign_find(t, addr >> PAGE_SHIFT, 0);
    return f ? f->tags[(addr & (PAGE_SIZE - 1)) >> 4] : -1;
}

EXPORT int emsan_tag_at(emsan_heap *h, uint64_t addr) { return h->tags ? tag_at(h, addr) : -1; }

/* 0xFF pointers match everything; hw-tags compares the 4 bits MTE stores. */
int tag_matches(heap_t *h, uint8_t ptr_tag, uint8_t mem_tag)
{
    if (ptr_tag == TAG_KERNEL) return 1;
    if (h->tag_mode == EMSAN_TAGS_HW) return (ptr_tag & 0xF) == (mem_tag & 0xF);
    return ptr_tag == mem_tag;
}

/* Does any granule of [tagged, tagged+size) carry a tag the pointer does not match? */
int tag_bad(heap_t *h, uint64_t tagged, uint64_t size)
{
    uint8_t ptag = (uint8_t)(tagged >> TAG_SHIFT);
    uint64_t a = tagged & UNTAG_MASK;
    if (!size) return 0;
    uint64_t last = a + size - 1;
    if (last < a) return 1;
    for (uint64_t g = a & ~(uint64_t)(TAG_GRANULE - 1); g <= last; g += TAG_GRANULE) {
        int mt = tag_at(h, g);
        if (mt >= 0 && !tag_matches(h, ptag, (uint8_t)mt)) return 1;
        if (g + TAG_GRANULE < g) break;
    }
    return 0;
}

/* The first granule of an access whose tag the pointer does not match (kasan_find_first_bad_addr). */
EXPORT uint64_t emsan_tag_first_bad(emsan_heap *h, uint64_t tagged, uint64_t size)
{
    uint8_t ptag = (uint8_t)(tagged >> TAG_SHIFT);
    uint64_t a = tagged & UNTAG_MASK;
    uint64_t n = size > (1ULL << 32) ? 1ULL << 32 : size;
    for (uint64_t g = a; g < a + n; g = (g & ~(uint64_t)(TAG_GRANULE - 1)) + TAG_GRANULE) {
        int mt = tag_at(h, g);
        if (mt >= 0 && !tag_matches(h, ptag, (uint8_t)mt)) return g;
    }
    return a;
}

/* Read-ahead by string code (shadow.c's rule): the READAHEAD bytes that end with the load hold
 * a NUL in granules of the pointer's tag. */
int tag_tolerated(heap_t *h, uint64_t pc, uint64_t tagged, uint64_t size)
{
    if (size > READAHEAD || !in_tolerant_range(h, pc)) return 0;
    uint64_t a = tagged & UNTAG_MASK, end = a + size, lo = end > READAHEAD ? end - READAHEAD : 0;
    uint8_t ptag = (uint8_t)(tagged >> TAG_SHIFT);
    uint8_t bytes[READAHEAD];
    if (mem_get(h->uc, lo, bytes, end - lo)) return 0;
    for (uint64_t g = lo; g < end; g++) {
        int mt = tag_at(h, g);
        if (bytes[g - lo] == 0 && mt >= 0 && tag_matches(h, ptag, (uint8_t)mt)) return 1;
    }
    return 0;
}

/* ---- the stack ring (mm/kasan/tags.c save_stack_info) ------------------------------------------ */

void tag_ring_record(heap_t *h, uint64_t tagged, uint64_t size, uint64_t cache_size, uint32_t stack, int is_free)
{
    struct tag_state *t = h->tags;
    struct ring_entry *e = &t->ring[t->ring_pos++ % RING_SIZE];
    e->ptr = tagged; e->size = size; e->cache_size = cache_size; e->stack = stack; e->is_free = (uint8_t)is_free;
}

/* kasan_complete_mode_report_info(): walk the ring backwards for records of the object at the
 * address with the pointer's tag; a free found first means use-after-free, an allocation
 * out-of-bounds, nothing an invalid access. */
EXPORT int emsan_tag_describe(emsan_heap *h, uint64_t tagged, uint64_t size, emsan_tag_report *out)
{
    memset(out, 0, sizeof *out);
    struct tag_state *t = h->tags;
    uint64_t addr = tagged & UNTAG_MASK;
    out->first_bad = emsan_tag_first_bad(h, tagged, size);
    out->mem_tag = tag_at(h, out->first_bad);
    emsan_obj_info info;
    if (!emsan_describe(h, addr, &info)) {
        out->bug = EMSAN_TAGBUG_INVALID;
        return 0;
    }
    out->found = 1;
    out->obj_start = info.start;
    out->obj_size = info.cache_size;
    out->cache_size = info.cache_size;
    out->large = info.large;
    uint8_t ptag = (uint8_t)(tagged >> TAG_SHIFT);
    int alloc_found = 0, free_found = 0;
    uint64_t n = t->ring_pos < RING_SIZE ? t->ring_pos : RING_SIZE;
    for (uint64_t k = 1; k <= n; k++) {
        struct ring_entry *e = &t->ring[(t->ring_pos - k) % RING_SIZE];
        if ((e->ptr & UNTAG_MASK) != info.start || (uint8_t)(e->ptr >> TAG_SHIFT) != ptag ||
            e->cache_size != info.cache_size)
            continue;
        if (e->is_free) {
            if (free_found) break;       /* a second free of the object: stop looking */
            free_found = 1;
            out->free_stack = e->stack;
            if (!out->bug) out->bug = EMSAN_TAGBUG_UAF;
        } else {
            if (alloc_found) break;
            alloc_found = 1;
            out->alloc_stack = e->stack;
            out->obj_size = e->size;
            if (!out->bug) out->bug = EMSAN_TAGBUG_OOB;
        }
        if (free_found && alloc_found) break;
    }
    if (!out->bug) out->bug = EMSAN_TAGBUG_INVALID;
    out->ring_alloc = alloc_found;
    out->ring_free = free_found;
    return 1;
}

EXPORT void emsan_tag_stats(emsan_heap *h, uint64_t *out)
{
    out[0] = h->tags->private_pages;
    out[1] = h->tags->mte_traps;
    out[2] = h->tags->fp_n;
    out[3] = h->tags->ring_pos;
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

static inline struct pc_rn *pc_info(heap_t *h, uint64_t pc)
{
    struct pc_rn *c = &h->tags->pcc[(pc >> 2) & (PCC_SIZE - 1)];
    if (UNLIKELY(c->pc != pc)) {
        uint32_t insn = 0;
        int rm = -1;
        c->rn = mem_get(h->uc, pc, &insn, 4) ? -1 : decode_base(insn, &rm);
        c->rm = rm;
        c->pc = pc;
    }
    return c;
}

/* The pointer an access went through: the base register, or the index register when that is
 * the one pointing near the address (code may index an untagged base with a pointer). */
static inline uint64_t access_pointer(heap_t *h, void *uc, const struct pc_rn *c, uint64_t addr)
{
    uint64_t p = reg_get(uc, h->tags->xregs[c->rn]);
    if (UNLIKELY(c->rm >= 0 && c->rm != 31)) {
        uint64_t d = (p & UNTAG_MASK) - addr;
        if (d + (1ULL << 32) > (2ULL << 32)) {         /* the base is far from the address */
            uint64_t q = reg_get(uc, h->tags->xregs[c->rm]);
            if (((q & UNTAG_MASK) - addr) + (1ULL << 32) <= (2ULL << 32)) return q;
        }
    }
    return p;
}

EXPORT void emsan_tag_mem_cb(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    (void)value;
    heap_t *h = ud;
    struct tag_state *t = h->tags;
    uint64_t off = addr - h->base;
    int mt;
    if (LIKELY(off < h->size)) {
        const uint8_t *p = t->page[off >> PAGE_SHIFT];
        mt = p ? p[(off & (PAGE_SIZE - 1)) >> 4] : TAG_INVALID;
    } else if (LIKELY(!t->fp_n)) {
        return;                                        /* no tags outside the heap */
    } else if ((mt = tag_at(h, addr)) < 0) {
        return;
    }
    uint64_t pc = reg_get(uc, h->regs[EMSAN_REG_PC]);
    const struct pc_rn *c = pc_info(h, pc);
    if (c->rn < 0) return;
    uint64_t ptr = access_pointer(h, uc, c, addr);
    uint8_t ptag = (uint8_t)(ptr >> TAG_SHIFT);
    uint64_t tagged = ((uint64_t)ptag << TAG_SHIFT) | addr;
    if (LIKELY(tag_matches(h, ptag, (uint8_t)mt))) {
        if (LIKELY((addr & (TAG_GRANULE - 1)) + (uint64_t)size <= TAG_GRANULE)) return;
        if (!tag_bad(h, tagged, (uint64_t)size)) return;  /* the access spans granules */
    }
    int is_write = type == 17 /* UC_MEM_WRITE */;
    if (!is_write && tag_tolerated(h, pc, tagged, (uint64_t)size)) return;
    report_error(h, EMSAN_ERR_ACCESS, tagged, (uint64_t)size, is_write, pc, stack_here(h, pc, 0), 0, 0);
}

/* Tag memory on a guest's request: __hwasan_tag_memory(p, tag, size), the HWASan interface. */
EXPORT void emsan_tag_memory(emsan_heap *h, uint64_t addr, uint8_t tag, uint64_t size)
{
    uint64_t a = (addr & UNTAG_MASK) & ~(uint64_t)(TAG_GRANULE - 1);
    uint64_t end = ((addr & UNTAG_MASK) + size + TAG_GRANULE - 1) & ~(uint64_t)(TAG_GRANULE - 1);
    if (end > a) tag_set(h, a, end - a, tag);
}

/* ---- MTE instructions (hw-tags): Unicorn traps them as undefined; emsan does their work ---------- */

static inline uint64_t xr(heap_t *h, int r, int sp)     /* X[r]; r == 31 is SP or XZR */
{
    if (r == 31 && !sp) return 0;
    return reg_get(h->uc, h->tags->xregs[r]);
}

static inline void xw(heap_t *h, int r, int sp, uint64_t v)
{
    if (r == 31 && !sp) return;
    reg_set(h->uc, h->tags->xregs[r], v);
}

static inline uint64_t with_tag(uint64_t p, unsigned tag) { return (p & ~(0xFULL << 56)) | ((uint64_t)(tag & 0xF) << 56); }
static inline unsigned alloc_tag(uint64_t p) { return (unsigned)(p >> 56) & 0xF; }
static inline uint64_t sext(uint64_t v, int bits) { return (uint64_t)((int64_t)(v << (64 - bits)) >> (64 - bits)); }

static void mte_set(heap_t *h, uint64_t addr, uint64_t len, unsigned tag)
{
    tag_set(h, (addr & UNTAG_MASK) & ~(uint64_t)(TAG_GRANULE - 1), len, (uint8_t)(0xF0 | (tag & 0xF)));
}

static void mte_zero(heap_t *h, uint64_t addr, uint64_t len)
{
    static const uint8_t zeros[MTE_BLOCK];
    mem_put(h->uc, (addr & UNTAG_MASK) & ~(uint64_t)(TAG_GRANULE - 1), zeros, len);
}

/* Returns 1 when the instruction at the PC was an MTE instruction, now done (PC advanced). */
EXPORT int emsan_mte_emulate(emsan_heap *h)
{
    if (!h->tags || h->tag_mode != EMSAN_TAGS_HW) return 0;
    void *uc = h->uc;
    uint64_t pc = reg_get(uc, h->regs[EMSAN_REG_PC]);
    uint32_t i;
    if (mem_get(uc, pc, &i, 4)) return 0;
    int rd = (int)(i & 31), rn = (int)((i >> 5) & 31), rm = (int)((i >> 16) & 31);
    if ((i & 0xFFE0FC00) == 0x9AC01000) {                         /* IRG Xd|SP, Xn|SP, Xm */
        uint16_t exclude = (uint16_t)xr(h, rm, 0);
        unsigned tag = 0;
        if (exclude != 0xFFFF) {
            do tag = (unsigned)(rnd(h->tags) >> 60); while (exclude & (1u << tag));
        }
        xw(h, rd, 1, with_tag(xr(h, rn, 1), tag));
    } else if ((i & 0xFFE0FC00) == 0x9AC01400) {                  /* GMI Xd, Xn|SP, Xm */
        xw(h, rd, 0, xr(h, rm, 0) | (1ULL << alloc_tag(xr(h, rn, 1))));
    } else if ((i & 0xBFC0C000) == 0x91800000) {                  /* ADDG / SUBG */
        uint64_t off = ((i >> 16) & 63) << 4;
        unsigned tadd = (i >> 10) & 15;
        uint64_t src = xr(h, rn, 1);
        uint64_t v = (i & 0x40000000) ? src - off : src + off;
        xw(h, rd, 1, with_tag(v, alloc_tag(src) + tadd));
    } else if ((i & 0xFFE0FC00) == 0x9AC00000) {                  /* SUBP Xd, Xn|SP, Xm|SP */
        xw(h, rd, 0, sext(xr(h, rn, 1), 56) - sext(xr(h, rm, 1), 56));
    } else if ((i & 0xFF200000) == 0xD9200000) {                  /* STG, STZG, ST2G, STZ2G, LDG, *GM */
        unsigned opc = (i >> 22) & 3, op2 = (i >> 10) & 3;
        uint64_t imm = sext((i >> 12) & 0x1FF, 9) << 4;
        uint64_t base = xr(h, rn, 1);
        if (op2 == 0) {
            if (opc == 1) {                                        /* LDG Xt, [Xn|SP, #simm] */
                int mt = tag_at(h, (base + imm) & ~(uint64_t)(TAG_GRANULE - 1));
                xw(h, rd, 0, with_tag(xr(h, rd, 0), mt < 0 ? 0 : (unsigned)mt));
            } else {
                uint64_t blk = (base & UNTAG_MASK) & ~(uint64_t)(MTE_BLOCK - 1);
                if (opc == 3) {                                    /* LDGM Xt, [Xn|SP] */
                    uint64_t v = 0;
                    for (int g = 0; g < MTE_BLOCK / TAG_GRANULE; g++) {
                        int mt = tag_at(h, blk + (uint64_t)g * TAG_GRANULE);
                        v |= (uint64_t)(mt < 0 ? 0 : mt & 0xF) << (4 * g);
                    }
                    xw(h, rd, 0, v);
                } else if (opc == 2) {                             /* STGM Xt, [Xn|SP] */
                    uint64_t v = xr(h, rd, 0);
                    for (int g = 0; g < MTE_BLOCK / TAG_GRANULE; g++)
                        mte_set(h, blk + (uint64_t)g * TAG_GRANULE, TAG_GRANULE, (unsigned)(v >> (4 * g)));
                } else {                                           /* STZGM Xt, [Xn|SP] */
                    mte_zero(h, blk, MTE_BLOCK);
                    mte_set(h, blk, MTE_BLOCK, alloc_tag(xr(h, rd, 0)));
                }
            }
        } else {
            uint64_t addr = op2 == 1 ? base : base + imm;         /* post-index uses the old base */
            uint64_t len = opc >= 2 ? 2 * TAG_GRANULE : TAG_GRANULE;
            unsigned tag = alloc_tag(xr(h, rd, 1));                /* Xt|SP */
            if (opc & 1) mte_zero(h, addr, len);                   /* STZG, STZ2G */
            mte_set(h, addr, len, tag);
            if (op2 != 2) xw(h, rn, 1, base + imm);                /* writeback */
        }
    } else if ((i & 0xFFC00000) == 0x68800000 || (i & 0xFFC00000) == 0x69000000 ||
               (i & 0xFFC00000) == 0x69800000) {                   /* STGP Xt1, Xt2, [Xn|SP, #simm] */
        unsigned mode = (i >> 23) & 3;                             /* 1 post, 2 offset, 3 pre */
        uint64_t imm = sext((i >> 15) & 0x7F, 7) << 4;
        int rt2 = (int)((i >> 10) & 31);
        uint64_t base = xr(h, rn, 1);
        uint64_t addr = mode == 1 ? base : base + imm;
        uint64_t pair[2] = {xr(h, rd, 0), xr(h, rt2, 0)};
        mem_put(uc, (addr & UNTAG_MASK) & ~(uint64_t)(TAG_GRANULE - 1), pair, 16);
        mte_set(h, addr, TAG_GRANULE, alloc_tag(addr));
        if (mode != 2) xw(h, rn, 1, base + imm);
    } else {
        return 0;
    }
    h->tags->mte_traps++;
    reg_set(uc, h->regs[EMSAN_REG_PC], pc + 4);
    return 1;
}
