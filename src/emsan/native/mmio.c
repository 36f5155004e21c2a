/* Access checks without a global memory hook (--checks mmio). Unicorn sends every load and
 * store through its slow path as soon as one memory hook exists; here only emsan's heap pays.
 * The heap lives in host memory emsan owns, mapped at its guest address, and a second view of
 * it is an MMIO region whose callbacks check the shadow and then do the access. Unicorn's
 * virtual TLB picks the view per page: pages whose shadow is all zero (nothing to check) map
 * straight to memory, the others to the checking view.
 *
 * An MMIO callback does not know the exact PC (Unicorn syncs it only at block exits): a bad
 * access carries the registers and candidate PCs from the engine (engine_access_pcs), and the
 * report finds the instruction among them by decoding. */
#include "kasan.h"

struct mmio_state {
    int cow;                           /* guest memory is copy-on-write (a snapshot): see below */
    uint64_t view;                     /* physical address of the checking (MMIO) view */
    uint8_t *direct;                   /* per heap page: the TLB may map it straight to memory */
    engine_pc_recovery pcr;            /* how the engine finds the PC of an access */
};

/* Returns the host memory behind the heap (the caller maps it at the heap's address). */
EXPORT void *emsan_mmio_init(emsan_kasan *k, uint64_t view_pa)
{
    struct mmio_state *m = calloc(1, sizeof *m);
    m->view = view_pa;
    m->direct = calloc(k->npages / 8 + 1, 1);
    k->mm = m;
    return k->host;
}

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
        e->paddr = va - m->view < k->size ? EMSAN_SHADOW_OFFSET - PAGE_SIZE : va;   /* the view is no guest memory */
        return 1;
    }
    uint64_t page = off >> PAGE_SHIFT;
    if (page_clean(k, page)) {
        m->direct[page >> 3] |= (uint8_t)(1 << (page & 7));
        e->paddr = va;
    } else {
        e->paddr = m->view + off;
    }
    return 1;
}

/* Shadow of [addr, addr+len) becomes poisoned: a page the TLB maps straight to memory must be
 * looked at again before the guest runs (shadow_sync flushes). */
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

static void bad_access(kasan_t *k, uint64_t addr, unsigned size, int is_write)
{
    uint64_t cand[4];
    int ncand = engine_access_pcs(k->rt->uc, &k->mm->pcr, k->rt->regs[EMSAN_REG_PC], cand, 4);
    access_error(k, addr, size, is_write, cand, ncand);
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
    else memcpy(&v, k->host + offset, size);
    return v;
}

EXPORT void emsan_mmio_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *ud)
{
    kasan_t *k = ud;
    uint64_t addr = k->base + offset;
    if (UNLIKELY(shadow_access_bad(k, addr, size))) bad_access(k, addr, size, 1);
    if (UNLIKELY(k->mm->cow)) mem_put(uc, addr, &value, size);
    else memcpy(k->host + offset, &value, size);
}

/* The allocator went back to a checkpoint: pages it mapped straight to memory may need checks
 * again. */
void mmio_rollback(kasan_t *k)
{
    if (!k->mm) return;
    memset(k->mm->direct, 0, k->npages / 8 + 1);
    tlb_flush(k->rt->uc);
}

