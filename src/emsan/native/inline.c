/* Access checks in translated code (--checks inline, the default where the engine has them:
 * x86-64 hosts). The heap is plain memory to the engine; engine/patches/011 makes translated
 * code look up, at every access inside the heap, a byte per granule in a flat copy of the
 * heap's shadow kept here, and call back only when that byte does not say "nothing to check":
 * the exact check (partial granules), the report and the exact PC are then emsan's. Accesses
 * the engine's helpers make (atomics, page-crossing, TLB misses, arm64's DC ZVA) are checked
 * the same way there.
 *
 * Generic mode: the copy holds shadow ^ KASAN_SLAB_REDZONE, a byte per 8 bytes; an access
 * passes when its byte is KASAN_SLAB_REDZONE (shadow 0). Tag modes (engine/patches/015): the
 * copy holds tag ^ TAG_INVALID, a byte per 16 bytes, and translated code compares it with the
 * pointer tag the address keeps (engine/patches/014). Either way the copy of an 8 GiB heap
 * (1 GiB, 512 MiB) is lazily backed, and its untouched (zero) bytes read as redzone or invalid
 * tag, which is what the heap's never-used chunks are (shadow.c, default_page; tags.c). */
#include <sys/mman.h>
#include "kasan.h"

#define FLAT_SHADOW_KEY KASAN_SLAB_REDZONE
#define FLAT_TAG_KEY TAG_INVALID

struct inline_state {
    uint8_t *flat;
    size_t bytes;
    unsigned shift;                      /* log2 of the granule: 3 (shadow) or 4 (tags) */
    uint8_t key;
    engine_pc_recovery pcr;
};

typedef int (*check_api_fn)(void *uc, uint64_t base, uint64_t size, const uint8_t *flat, uint8_t key,
                            void *cb, void *ud);

void inline_destroy(kasan_t *k)
{
    if (!k->il) return;
    munmap(k->il->flat, k->il->bytes);
    free(k->il);
    k->il = NULL;
}

EXPORT int emsan_inline_init(emsan_kasan *k, void *get_cpu, void *restore)
{
    int tags = k->tags != NULL;
    void *api = tags ? emsan_uc.uc_emsan_tag_check : emsan_uc.uc_emsan_shadow_check;
    if (!api || k->il) return 0;
    struct inline_state *s = calloc(1, sizeof *s);
    if (!s) return 0;
    s->shift = tags ? 4 : 3;
    s->key = tags ? FLAT_TAG_KEY : FLAT_SHADOW_KEY;
    s->bytes = (k->size >> s->shift) + PAGE_SIZE;     /* the last granule's neighbour is read too */
    s->flat = mmap(NULL, s->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s->flat == MAP_FAILED) { free(s); return 0; }
    s->pcr.get_cpu = get_cpu;
    s->pcr.restore = restore;
    k->il = s;
    if (((check_api_fn)api)(k->rt->uc, k->base, k->size, s->flat, s->key,
                            tags ? (void *)emsan_inline_tag_cb : (void *)emsan_inline_cb, k) != 0) {
        inline_destroy(k);               /* not this host: the caller checks another way */
        return 0;
    }
    return 1;
}

/* The shadow byte (generic) or tag (tag modes) of [addr, addr+len) (granule aligned) became
 * `value`: so does the copy's. */
void inline_fill(kasan_t *k, uint64_t addr, uint64_t len, uint8_t value)
{
    struct inline_state *s = k->il;
    uint64_t end = addr + len, hi = k->base + k->size;
    if (addr < k->base) addr = k->base;
    if (end > hi) end = hi;
    if (addr < end) memset(s->flat + ((addr - k->base) >> s->shift), value ^ s->key, (end - addr) >> s->shift);
}

static void inline_error(kasan_t *k, void *uc, uint64_t addr, int size, _Bool is_write, uintptr_t host_pc)
{
    uint64_t pc;
    int exact = host_pc && engine_pc_at(uc, &k->il->pcr, host_pc, k->rt->regs[EMSAN_REG_PC], &pc);
    access_error(k, addr, (unsigned)size, is_write, exact ? &pc : NULL, exact);
}

EXPORT void emsan_inline_cb(void *uc, uint64_t addr, int size, _Bool is_write, uintptr_t host_pc, void *ud)
{
    kasan_t *k = ud;
    if (LIKELY(!shadow_access_bad(k, addr, (uint64_t)size))) return;   /* a partial granule's good bytes */
    inline_error(k, uc, addr, size, is_write, host_pc);
}

/* addr is tagged. What passes here: the match-all tag, hw-tags' 4-bit compare, a granule
 * translated code looked at without need (an access not aligned to its size). */
EXPORT void emsan_inline_tag_cb(void *uc, uint64_t addr, int size, _Bool is_write, uintptr_t host_pc, void *ud)
{
    kasan_t *k = ud;
    if (LIKELY(!tags_access_bad(k, addr, (uint64_t)size))) return;
    inline_error(k, uc, addr, size, is_write, host_pc);
}

/* The virtual TLB of tag modes checked inline: every page of the guest maps to itself, its
 * pointer tag taken off (the TLB sees tagged addresses; each tag of a page has its entry). */
EXPORT _Bool emsan_inline_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud)
{
    (void)uc; (void)type;
    kasan_t *k = ud;
    engine_tlb_entry *e = entry;
    e->paddr = guest_addr(k->rt, vaddr);
    e->perms = ENGINE_PROT_ALL;
    return 1;
}
