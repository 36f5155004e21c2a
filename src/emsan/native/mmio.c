/* Access checks without a global memory hook (--checks mmio). Unicorn sends every load and
 * store through its slow path as soon as one memory hook exists; here only emsan's heap pays.
 * The heap lives in host memory emsan owns, mapped at its guest address, and a second view of
 * it is an MMIO region whose callbacks check the shadow and then do the access. Unicorn's
 * virtual TLB picks the view per page: pages whose shadow is all zero (nothing to check) map
 * straight to memory, the others to the checking view.
 *
 * Tag modes (tags.c) keep the pointer tag in the address the TLB sees (engine/patches/014), and
 * have one view per pointer tag, at view + tag * heap size: a (tag, page) pair maps straight to
 * memory when every granule of the page carries a tag the pointer matches, else to its tag's
 * view, whose callbacks know the pointer tag from the offset.
 *
 * An MMIO callback does not know the exact PC (Unicorn syncs it only at block exits): a bad
 * access carries the registers and candidate PCs from the engine (engine_access_pcs), and the
 * report finds the instruction among them by decoding. */
#include "kasan.h"

struct mmio_state {
    int cow;                           /* guest memory is copy-on-write (a snapshot): see below */
    uint64_t view;                     /* physical address of the checking (MMIO) view */
    uint64_t views;                    /* its copies of the heap: 1, or 256 (one per pointer tag) */
    unsigned shift;                    /* log2 of the heap size (a power of two), else 0 */
    uint8_t *direct;                   /* per heap page: the TLB may map it straight to memory */
    engine_pc_recovery pcr;            /* how the engine finds the PC of an access */
};

/* Returns the host memory behind the heap (the caller maps it at the heap's address); the
 * view spans emsan_mmio_view_bytes(). */
EXPORT void *emsan_mmio_init(emsan_kasan *k, uint64_t view_pa)
{
    struct mmio_state *m = calloc(1, sizeof *m);
    m->view = view_pa;
    m->views = k->tags ? 256 : 1;
    if ((k->size & (k->size - 1)) == 0) m->shift = (unsigned)__builtin_ctzll(k->size);
    m->direct = calloc(k->npages / 8 + 1, 1);
    k->mm = m;
    return k->host;
}

EXPORT uint64_t emsan_mmio_view_bytes(emsan_kasan *k) { return k->mm->views * k->size; }

void mmio_destroy(kasan_t *k)
{
    if (!k->mm) return;
    free(k->mm->direct);
    free(k->mm);
    k->mm = NULL;
}

/* Is the shadow of heap page `page` all zero? */
static int page_clean(kasan_t *k, uint64_t page)
{
    uint64_t addr = k->base + (page << PAGE_SHIFT);
    uint32_t pg = shadow_resolve(k, addr >> SHADOW_CHUNK_SHIFT);
    if (pg == SHADOW_ZERO) return 1;
    if (pg < SHADOW_FIRST_REAL) return 0;
    const uint64_t *s = (const uint64_t *)(shadow_page(k, pg) + ((addr & (SHADOW_CHUNK - 1)) >> 3));
    for (unsigned i = 0; i < (PAGE_SIZE >> 3) / 8; i++)
        if (s[i]) return 0;
    return 1;
}

EXPORT _Bool emsan_mmio_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud)
{
    (void)uc; (void)type;
    kasan_t *k = ud;
    struct mmio_state *m = k->mm;
    engine_tlb_entry *e = entry;
    uint64_t va = guest_addr(k->rt, vaddr);
    uint64_t off = va - k->base;
    e->perms = ENGINE_PROT_ALL;
    if (off >= k->size) {
        /* the view is no guest memory */
        e->paddr = va - m->view < m->views * k->size ? EMSAN_SHADOW_OFFSET - PAGE_SIZE : va;
        return 1;
    }
    uint64_t page = off >> PAGE_SHIFT;
    uint64_t view = 0;
    int direct;
    if (k->tags) {
        view = vaddr >> TAG_SHIFT;
        direct = tags_page_matches(k, page, (uint8_t)view);
    } else {
        direct = page_clean(k, page);
    }
    if (direct) {
        m->direct[page >> 3] |= (uint8_t)(1 << (page & 7));
        e->paddr = va;
    } else {
        e->paddr = m->view + view * k->size + off;
    }
    return 1;
}

/* Shadow of [addr, addr+len) becomes poisoned (tag modes: its tags change): a page the TLB maps
 * straight to memory must be looked at again before the guest runs (shadow_sync flushes). */
void mmio_poisoned(kasan_t *k, uint64_t addr, uint64_t len)
{
    struct mmio_state *m = k->mm;
    uint64_t first = (addr - k->base) >> PAGE_SHIFT, last = (addr + len - 1 - k->base) >> PAGE_SHIFT;
    for (uint64_t p = first; p <= last && p < k->npages; p++) {
        if (m->direct[p >> 3] & (1 << (p & 7))) {
            k->sm.must_flush = 1;
            memset(m->direct, 0, k->npages / 8 + 1);        /* the flush forgets every mapping */
            return;
        }
    }
}

EXPORT void emsan_mmio_set_pc_recovery(emsan_kasan *k, void *get_cpu, void *restore)
{
    k->mm->pcr.get_cpu = get_cpu;
    k->mm->pcr.restore = restore;
}

/* addr: tagged in tag modes (the pointer tag of the view) */
static void bad_access(kasan_t *k, uint64_t addr, unsigned size, int is_write)
{
    uint64_t cand[4];
    int ncand = engine_access_pcs(k->rt->uc, &k->mm->pcr, k->rt->regs[EMSAN_REG_PC], cand, 4);
    access_error(k, addr, size, is_write, cand, ncand);
}

/* A piece of an access (the engine's pieces are 1, 2, 4 or 8 bytes) as one load or store: a
 * memcpy of a variable size was a call, and its narrow store into a wider zeroed word stalled
 * the load that followed (store forwarding; perf put most of the view's callback there). */
static inline uint64_t piece_load(const uint8_t *p, unsigned size)
{
    uint8_t b; uint16_t h; uint32_t w; uint64_t d = 0;
    switch (size) {
    case 1: memcpy(&b, p, 1); return b;
    case 2: memcpy(&h, p, 2); return h;
    case 4: memcpy(&w, p, 4); return w;
    case 8: memcpy(&d, p, 8); return d;
    default: memcpy(&d, p, size < 8 ? size : 8); return d;
    }
}

static inline void piece_store(uint8_t *p, uint64_t v, unsigned size)
{
    uint8_t b = (uint8_t)v; uint16_t h = (uint16_t)v; uint32_t w = (uint32_t)v;
    switch (size) {
    case 1: memcpy(p, &b, 1); break;
    case 2: memcpy(p, &h, 2); break;
    case 4: memcpy(p, &w, 4); break;
    default: memcpy(p, &v, size < 8 ? size : 8); break;
    }
}

/* Once the engine keeps a memory snapshot (a persistent fuzzing loop), the first write to a heap
 * page, by the guest through the direct mapping or by anyone through the engine's API, gives the
 * page a private copy that replaces emsan's host memory at that address until the snapshot is
 * restored: emsan's copy no longer holds what the guest sees. The checking view then reads and
 * writes through the engine, at the page's guest address, whichever copy is current there. */
EXPORT void emsan_mmio_copy_on_write(emsan_kasan *k, int on) { if (k->mm) k->mm->cow = on; }

EXPORT uint64_t emsan_mmio_read(void *uc, uint64_t offset, unsigned size, void *ud)
{
    kasan_t *k = ud;
    uint64_t addr = k->base + offset, v = 0;
    if (UNLIKELY(shadow_access_bad(k, addr, size))) bad_access(k, addr, size, 0);
    if (UNLIKELY(k->mm->cow)) mem_get(uc, addr, &v, size);
    else v = piece_load(k->host + offset, size);
    return v;
}

EXPORT void emsan_mmio_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *ud)
{
    kasan_t *k = ud;
    uint64_t addr = k->base + offset;
    if (UNLIKELY(shadow_access_bad(k, addr, size))) bad_access(k, addr, size, 1);
    if (UNLIKELY(k->mm->cow)) mem_put(uc, addr, &value, size);
    else piece_store(k->host + offset, value, size);
}

/* The allocator went back to a checkpoint: pages it mapped straight to memory may need checks
 * again. */
void mmio_rollback(kasan_t *k)
{
    if (!k->mm) return;
    memset(k->mm->direct, 0, k->npages / 8 + 1);
    tlb_flush(k->rt->uc);
}


/* The tag modes' views: the pointer tag is the view's index. A piece of an access (at most 8
 * bytes, aligned to its size, or the access itself) lies in one granule, or its check takes
 * every granule it covers (tags.c, tag_bad). */
static inline uint64_t tag_view_addr(kasan_t *k, uint64_t offset, uint64_t *off)
{
    struct mmio_state *m = k->mm;
    uint64_t tag = m->shift ? offset >> m->shift : offset / k->size;
    *off = offset - tag * k->size;
    return (tag << TAG_SHIFT) | (k->base + *off);
}

EXPORT uint64_t emsan_tags_mmio_read(void *uc, uint64_t offset, unsigned size, void *ud)
{
    kasan_t *k = ud;
    uint64_t off, v = 0;
    uint64_t tagged = tag_view_addr(k, offset, &off);
    if (UNLIKELY(tags_access_bad(k, tagged, size))) bad_access(k, tagged, size, 0);
    if (UNLIKELY(k->mm->cow)) mem_get(uc, k->base + off, &v, size);
    else v = piece_load(k->host + off, size);
    return v;
}

EXPORT void emsan_tags_mmio_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *ud)
{
    kasan_t *k = ud;
    uint64_t off;
    uint64_t tagged = tag_view_addr(k, offset, &off);
    if (UNLIKELY(tags_access_bad(k, tagged, size))) bad_access(k, tagged, size, 1);
    if (UNLIKELY(k->mm->cow)) mem_put(uc, k->base + off, &value, size);
    else piece_store(k->host + off, value, size);
}
