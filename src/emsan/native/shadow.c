/* Shadow memory: one byte per 8-byte granule with the kernel's generic encoding, kept per
 * heap page. Pages with no objects share one read-only page; a private page appears only
 * when objects arrive, and large objects' interior pages share an all-zero page. */
#include "internal.h"

uint8_t emsan_shadow_none[SHADOW_PER_PAGE];   /* filled with KASAN_SLAB_REDZONE at start-up */
uint8_t emsan_shadow_zero[SHADOW_PER_PAGE];   /* all accessible */
uint8_t emsan_shadow_freed[SHADOW_PER_PAGE];  /* a freed large object's page */

__attribute__((constructor)) static void shadow_init(void)
{
    memset(emsan_shadow_none, KASAN_SLAB_REDZONE, sizeof emsan_shadow_none);
    memset(emsan_shadow_freed, KASAN_PAGE_FREE, sizeof emsan_shadow_freed);
}

static int is_shared(const uint8_t *p)
{
    return p == NULL || p == emsan_shadow_none || p == emsan_shadow_zero || p == emsan_shadow_freed;
}

/* Copy-on-write: give `page` a private shadow page before it is written. */
static uint8_t *own_page(heap_t *h, uint64_t page)
{
    uint8_t *p = h->shadow[page];
    if (!is_shared(p))
        return p;
    uint8_t *np = malloc(SHADOW_PER_PAGE);
    memcpy(np, p ? p : emsan_shadow_none, SHADOW_PER_PAGE);
    h->shadow[page] = np;
    h->stats.shadow_pages++;
    return np;
}

void shadow_share(heap_t *h, uint64_t page, const uint8_t *shared)
{
    uint8_t *p = h->shadow[page];
    if (!is_shared(p)) {
        free(p);
        h->stats.shadow_pages--;
    }
    h->shadow[page] = (uint8_t *)shared;
}

/* Set the shadow of [addr, addr+len) (granule aligned) to `value`. */
void shadow_fill(heap_t *h, uint64_t addr, uint64_t len, uint8_t value)
{
    uint64_t off = addr - h->base, end = off + len;
    while (off < end) {
        uint64_t page = off >> PAGE_SHIFT;
        uint64_t page_end = (page + 1) << PAGE_SHIFT;
        uint64_t stop = end < page_end ? end : page_end;
        const uint8_t *shared = value == 0 ? emsan_shadow_zero : value == KASAN_PAGE_FREE ? emsan_shadow_freed : NULL;
        if (shared && (off & (PAGE_SIZE - 1)) == 0 && stop == page_end) {
            shadow_share(h, page, shared);
        } else {
            uint8_t *p = own_page(h, page);
            memset(p + ((off & (PAGE_SIZE - 1)) >> 3), value, (stop - off) >> 3);
        }
        off = stop;
    }
}

/* Make [addr, addr+size) accessible, with the kernel's partial last granule, and poison the
 * rest up to `poison_to` with `rz`. addr is granule aligned. */
void shadow_unpoison(heap_t *h, uint64_t addr, uint64_t size, uint64_t poison_to, uint8_t rz)
{
    uint64_t full = size & ~(uint64_t)(GRANULE - 1);
    if (full)
        shadow_fill(h, addr, full, 0);
    uint64_t rest = addr + full;
    if (size & (GRANULE - 1)) {
        uint64_t off = rest - h->base;
        own_page(h, off >> PAGE_SHIFT)[(off & (PAGE_SIZE - 1)) >> 3] = (uint8_t)(size & (GRANULE - 1));
        rest += GRANULE;
    }
    if (poison_to > rest)
        shadow_fill(h, rest, poison_to - rest, rz);
}

/* Is any byte of [addr, addr+size) poisoned? (memory_is_poisoned_n, across pages) */
int shadow_bad(heap_t *h, uint64_t addr, uint64_t size)
{
    uint64_t off = addr - h->base;
    uint64_t last = off + size - 1;
    if (UNLIKELY(last >= h->size || last < off))
        return 1;
    uint64_t g = off >> 3, glast = last >> 3;
    for (; g < glast; g++) {
        if (shadow_at(h, g << 3) != 0)
            return 1;
    }
    int8_t s = shadow_at(h, last);
    return s != 0 && (s < 0 || (int8_t)(last & 7) >= s);
}

int in_tolerant_range(heap_t *h, uint64_t pc)
{
    for (size_t i = 0; i + 1 < h->tolerant.n; i += 2)
        if (pc >= h->tolerant.v[i] && pc < h->tolerant.v[i + 1]) return 1;
    return 0;
}

static int tolerated(heap_t *h, uint64_t pc, uint64_t addr, uint64_t size)
{
    if (!in_tolerant_range(h, pc)) return 0;
    /* Unicorn hands a 16- or 32-byte vector load over as 8-byte pieces, so judge the aligned
     * 32-byte block the piece belongs to: tolerated when any byte of it is accessible. */
    uint64_t blk = size > 32 ? size : 32;
    for (uint64_t g = addr & ~(blk - 1); g < (addr & ~(blk - 1)) + blk; g += GRANULE) {
        uint64_t off = g - h->base;
        if (off < h->size && shadow_at(h, off) >= 0)
            return 1;
    }
    return 0;
}

EXPORT void emsan_add_tolerant_range(emsan_heap *h, uint64_t lo, uint64_t hi)
{
    vec_push(&h->tolerant, lo);
    vec_push(&h->tolerant, hi);
}

/* The per-access check: called by Unicorn for every load and store in the heap range. */
EXPORT void emsan_mem_cb(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    (void)value;
    heap_t *h = ud;
    uint64_t off = addr - h->base;
    if (off >= h->size)
        return;                           /* no shadow outside the heap (unsigned: below it too) */
    /* Fast path: the whole access inside one granule whose shadow allows it. */
    uint64_t last = off + (uint64_t)size - 1;
    if (LIKELY((off >> 3) == (last >> 3))) {
        int8_t s = shadow_at(h, off);
        if (LIKELY(s == 0 || (s > 0 && (int8_t)(last & 7) < s)))
            return;
    } else if (!shadow_bad(h, addr, (uint64_t)size)) {
        return;
    }
    int is_write = type == 17 /* UC_MEM_WRITE */;
    uint64_t pc = reg_get(uc, h->regs[EMSAN_REG_PC]);
    if (!is_write && size >= 8 && (addr & ((uint64_t)size - 1)) == 0 && tolerated(h, pc, addr, (uint64_t)size))
        return;
    report_error(h, EMSAN_ERR_ACCESS, addr, (uint64_t)size, is_write, pc, stack_here(h, pc, 0), 0, 0);
}

EXPORT int emsan_shadow_byte(emsan_heap *h, uint64_t addr)
{
    uint64_t off = addr - h->base;
    if (off >= h->size)
        return -1;
    return (uint8_t)shadow_at(h, off);
}

