/* The shadow, seen by the guest: compiler-instrumented code computes
 * shadow(addr) = (addr >> 3) + EMSAN_SHADOW_OFFSET and reads it itself. The pool of shadow
 * pages (shadow.c) is mapped into Unicorn at EMSAN_SHADOW_POOL_PA, and Unicorn's virtual TLB
 * maps each 4 KiB of the shadow range to the chunk's pool page: shared pages read-only (a
 * write fills the TLB again and gets a private copy), private pages read-write.
 *
 * As with the per-page shadow proposed for the kernel, a chunk may change pages while the guest
 * TLB still maps the old one. emsan flushes at its next call into the runtime, and a check
 * that failed meanwhile is re-checked against the current pages before anything is reported
 * (emsan_shadow_recheck), so a stale mapping never produces a false report. */
#include "kasan.h"

EXPORT void *emsan_shadow_pool(emsan_kasan *k) { return k->sm.pool; }
EXPORT uint64_t emsan_shadow_pool_bytes(void) { return SHADOW_POOL_BYTES; }

EXPORT void emsan_shadow_expose(emsan_kasan *k) { k->sm.exposed = 1; }

EXPORT _Bool emsan_shadow_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud)
{
    (void)uc;
    kasan_t *k = ud;
    engine_tlb_entry *e = entry;
    uint64_t va = guest_addr(k->rt, vaddr);
    uint64_t soff = va - EMSAN_SHADOW_OFFSET;
    if (LIKELY(soff >= (SHADOW_VA_LIMIT >> 3))) {
        /* Guest memory: identity, except that the pool is no guest memory. */
        e->paddr = va - EMSAN_SHADOW_POOL_PA < SHADOW_POOL_BYTES ? EMSAN_SHADOW_OFFSET - PAGE_SIZE : va;
        e->perms = ENGINE_PROT_ALL;             /* the physical region's own protection still applies */
        return 1;
    }
    uint64_t chunk = soff >> PAGE_SHIFT;
    uint32_t pg = shadow_resolve(k, chunk);
    if (pg < SHADOW_FIRST_REAL && type == ENGINE_MEM_WRITE) {
        /* The guest poisons shadow itself (stack redzones): a private page from now on. The
         * TLB entry being filled is the only one that maps this page, so no flush is needed. */
        if (shadow_own(k, chunk)) pg = shadow_resolve(k, chunk);
    }
    /* arm64's TLB pages can be smaller than 4 KiB: keep the offset inside the shadow page. */
    e->paddr = EMSAN_SHADOW_POOL_PA + ((uint64_t)pg << PAGE_SHIFT) + (soff & (PAGE_SIZE - 1));
    e->perms = pg < SHADOW_FIRST_REAL ? ENGINE_PROT_READ : ENGINE_PROT_RW;
    return 1;
}

/* Make the guest see the current pages: called where emsan runs between guest accesses. */
void shadow_sync(kasan_t *k, int now)
{
    struct shadow_map *sm = &k->sm;
    if (!(sm->exposed || k->mm) || !(sm->must_flush || (now && sm->remapped && sm->exposed)))
        return;
    tlb_flush(k->rt->uc);
    sm->must_flush = sm->remapped = 0;
    k->stats.tlb_flushes++;
}

/* The guest's own check found [addr, addr+size) poisoned: is it, according to the current
 * pages? If not, the guest read a stale mapping; flush so it sees the current one. */
EXPORT int emsan_shadow_recheck(emsan_kasan *k, uint64_t addr, uint64_t size)
{
    if (!size || shadow_bad(k, addr, size))
        return 1;
    k->stats.stale_rechecks++;
    k->sm.remapped = 1;
    shadow_sync(k, 1);
    return 0;
}
