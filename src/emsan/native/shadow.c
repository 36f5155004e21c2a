/* Shadow memory: one byte per 8-byte granule with the kernel's generic encoding, for every
 * guest address below 2^44, kept per page (seeds/002): one 4 KiB shadow page covers 32 KiB
 * of memory. Chunks that need no private shadow share read-only pages (all accessible, "no
 * object here", freed, never-touch "black"); a private page replaces them when objects
 * arrive. All pages live in one host pool, so the same bytes can be mapped into the guest at
 * EMSAN_SHADOW_OFFSET for compiler-instrumented code (gshadow.c). */
#include <sys/mman.h>
#include "internal.h"

/* Content of each shared page. */
static const uint8_t shared_value[SHADOW_FIRST_REAL] = {
    [SHADOW_ZERO] = 0, [SHADOW_NONE] = KASAN_SLAB_REDZONE, [SHADOW_FREED] = KASAN_PAGE_FREE,
    [SHADOW_BLACK] = KASAN_VMALLOC_INVALID,
};

static size_t vm_bitmap_bytes(const struct shadow_map *sm) { return (sm->vm_size >> PAGE_SHIFT) / 8 + 1; }

int shadow_init(heap_t *h, int share)
{
    struct shadow_map *sm = &h->sm;
    sm->pool = mmap(NULL, SHADOW_POOL_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                    -1, 0);
    if (sm->pool == MAP_FAILED) { sm->pool = NULL; return 0; }
    for (uint32_t i = 1; i < SHADOW_FIRST_REAL; i++)
        memset(sm->pool + ((uint64_t)i << PAGE_SHIFT), shared_value[i], PAGE_SIZE);
    sm->next = SHADOW_FIRST_REAL;
    sm->share = share;
    return 1;
}

void shadow_destroy(heap_t *h)
{
    struct shadow_map *sm = &h->sm;
    for (size_t i = 0; i < SHADOW_DIR_SIZE; i++) free(sm->dir[i]);
    free(sm->spare.v);
    if (sm->vm_pages) munmap(sm->vm_pages, vm_bitmap_bytes(sm));
    free(sm->release.v);
    if (sm->pool) munmap(sm->pool, SHADOW_POOL_BYTES);
}

static uint32_t *slot_of(heap_t *h, uint64_t chunk)
{
    uint32_t **leaf = &h->sm.dir[chunk >> SHADOW_LEAF_SHIFT];
    if (UNLIKELY(!*leaf)) *leaf = calloc(SHADOW_LEAF_SIZE, sizeof **leaf);
    return &(*leaf)[chunk & (SHADOW_LEAF_SIZE - 1)];
}

/* The page a chunk uses when nothing has been said about it: emsan's heap has no objects
 * there yet, the mmap ("vmalloc") area is resolved from what the guest has mapped, and
 * anything else is ordinary memory. */
static uint32_t default_page(heap_t *h, uint64_t chunk);

uint32_t shadow_resolve(heap_t *h, uint64_t chunk)
{
    uint32_t *slot = slot_of(h, chunk);
    if (!*slot) *slot = default_page(h, chunk);
    return *slot;
}

static uint32_t new_page(heap_t *h, uint32_t copy_of)
{
    struct shadow_map *sm = &h->sm;
    uint32_t pg;
    if (sm->spare.n) pg = (uint32_t)sm->spare.v[--sm->spare.n];
    else if (sm->next < SHADOW_POOL_PAGES) pg = sm->next++;
    else return 0;
    memcpy(shadow_page(h, pg), shadow_page(h, copy_of), PAGE_SIZE);
    h->stats.shadow_pages++;
    if (h->stats.shadow_pages > h->stats.shadow_pages_peak) h->stats.shadow_pages_peak = h->stats.shadow_pages;
    return pg;
}

static void put_page(heap_t *h, uint32_t pg)
{
    if (pg < SHADOW_FIRST_REAL) return;
    madvise(shadow_page(h, pg), PAGE_SIZE, MADV_DONTNEED);     /* resident no more */
    vec_push(&h->sm.spare, pg);
    h->stats.shadow_pages--;
    if (h->sm.exposed) h->sm.must_flush = 1;   /* the guest's TLB may still map it */
}

/* Point a chunk at another page; the guest's TLB may still map the old one (gshadow.c). */
/* A chunk changes pages. A guest TLB still mapping a poisoned shared page only makes the
 * guest's checks fail, and those are re-checked (gshadow.c): that flush can wait. One still
 * mapping the zero page would hide poison, and a recycled page anything: flush before the
 * guest runs again. */
static void remap(heap_t *h, uint32_t *slot, uint32_t pg)
{
    if (*slot == SHADOW_ZERO && h->sm.exposed) h->sm.must_flush = 1;
    put_page(h, *slot);
    *slot = pg;
    h->sm.remapped = 1;
}

static void set_chunk(heap_t *h, uint64_t chunk, uint32_t pg)
{
    uint32_t *slot = slot_of(h, chunk);
    if (*slot != pg) remap(h, slot, pg);
}

/* Copy-on-write: give a chunk a private page before it is written. */
uint8_t *shadow_own(heap_t *h, uint64_t chunk)
{
    uint32_t pg = shadow_resolve(h, chunk);
    if (pg >= SHADOW_FIRST_REAL) return shadow_page(h, pg);
    uint32_t np = new_page(h, pg);
    if (!np) return NULL;
    remap(h, slot_of(h, chunk), np);
    return shadow_page(h, np);
}

static uint32_t shared_for(uint8_t value)
{
    return value == 0 ? SHADOW_ZERO : value == KASAN_SLAB_REDZONE ? SHADOW_NONE :
           value == KASAN_PAGE_FREE ? SHADOW_FREED : value == KASAN_VMALLOC_INVALID ? SHADOW_BLACK : 0;
}

/* Set the shadow of [addr, addr+len) (granule aligned) to `value`. */
void shadow_fill(heap_t *h, uint64_t addr, uint64_t len, uint8_t value)
{
    if (h->mm && value) mmio_poisoned(h, addr, len);
    uint64_t end = addr + len;
    uint32_t shared = h->sm.share ? shared_for(value) : 0;
    while (addr < end) {
        uint64_t chunk = addr >> SHADOW_CHUNK_SHIFT;
        uint64_t chunk_end = (chunk + 1) << SHADOW_CHUNK_SHIFT;
        uint64_t stop = end < chunk_end ? end : chunk_end;
        if (shared && (addr & (SHADOW_CHUNK - 1)) == 0 && stop == chunk_end) {
            set_chunk(h, chunk, shared);
        } else {
            uint8_t *p = shadow_own(h, chunk);
            if (p) memset(p + ((addr & (SHADOW_CHUNK - 1)) >> 3), value, (stop - addr) >> 3);
        }
        addr = stop;
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
        uint8_t *p = shadow_own(h, rest >> SHADOW_CHUNK_SHIFT);
        if (p) p[(rest & (SHADOW_CHUNK - 1)) >> 3] = (uint8_t)(size & (GRANULE - 1));
        if (h->mm) mmio_poisoned(h, rest, GRANULE);
        rest += GRANULE;
    }
    if (poison_to > rest)
        shadow_fill(h, rest, poison_to - rest, rz);
}

/* Is any byte of [addr, addr+size) poisoned? (memory_is_poisoned_n, across pages) */
int shadow_bad(heap_t *h, uint64_t addr, uint64_t size)
{
    uint64_t last = addr + size - 1;
    if (UNLIKELY(last >= SHADOW_VA_LIMIT || last < addr))
        return 1;
    uint64_t g = addr >> 3, glast = last >> 3;
    for (; g < glast; g++) {
        if (shadow_at(h, g << 3) != 0)
            return 1;
    }
    int8_t s = shadow_at(h, last);
    return s != 0 && (s < 0 || (int8_t)(last & 7) >= s);
}

/* Is any byte of [lo, hi) poisoned where shadow says something: emsan's heap and the mmap
 * area (elsewhere all memory is accessible)? */
int shadow_range_bad(heap_t *h, uint64_t lo, uint64_t hi)
{
    const uint64_t area[2][2] = {{h->base, h->base + h->size}, {h->sm.vm_lo, h->sm.vm_lo + h->sm.vm_size}};
    for (int i = 0; i < 2; i++) {
        uint64_t a = lo > area[i][0] ? lo : area[i][0], b = hi < area[i][1] ? hi : area[i][1];
        if (a < b && shadow_bad(h, a, b - a)) return 1;
    }
    return 0;
}

/* ---- the mmap ("vmalloc") area: shadow resolved lazily from what the guest has mapped -------- */

/* One bit per guest page of the area: mapped or not. */
static inline int vm_mapped(heap_t *h, uint64_t addr)
{
    uint64_t p = (addr - h->sm.vm_lo) >> PAGE_SHIFT;
    return (h->sm.vm_pages[p >> 3] >> (p & 7)) & 1;
}

static inline int in_vm(heap_t *h, uint64_t addr) { return h->sm.vm_pages && addr - h->sm.vm_lo < h->sm.vm_size; }

/* Populate a chunk of the area: all mapped shares the zero page, nothing mapped the black
 * page, a mix gets a private page with 00 for mapped pages and F8 for the holes. */
static uint32_t vm_page(heap_t *h, uint64_t chunk)
{
    uint64_t base = chunk << SHADOW_CHUNK_SHIFT;
    unsigned mapped = 0, n = SHADOW_CHUNK >> PAGE_SHIFT;
    for (unsigned i = 0; i < n; i++) mapped += (unsigned)vm_mapped(h, base + ((uint64_t)i << PAGE_SHIFT));
    if (h->sm.share && mapped == 0) return SHADOW_BLACK;
    if (h->sm.share && mapped == n) return SHADOW_ZERO;
    uint32_t pg = new_page(h, SHADOW_BLACK);
    if (!pg) return SHADOW_BLACK;
    h->stats.vm_populated++;
    uint8_t *p = shadow_page(h, pg);
    for (unsigned i = 0; i < n; i++)
        if (vm_mapped(h, base + ((uint64_t)i << PAGE_SHIFT)))
            memset(p + i * (PAGE_SIZE >> 3), 0, PAGE_SIZE >> 3);
    return pg;
}

static uint32_t default_page(heap_t *h, uint64_t chunk)
{
    uint64_t addr = chunk << SHADOW_CHUNK_SHIFT;
    if (addr - h->base < h->size) return SHADOW_NONE;
    if (in_vm(h, addr)) return vm_page(h, chunk);
    return SHADOW_ZERO;
}

EXPORT void emsan_vm_area(emsan_heap *h, uint64_t lo, uint64_t hi)
{
    struct shadow_map *sm = &h->sm;
    sm->vm_lo = lo & ~(SHADOW_CHUNK - 1);
    sm->vm_size = ((hi + SHADOW_CHUNK - 1) & ~(SHADOW_CHUNK - 1)) - sm->vm_lo;
    if (sm->vm_pages) munmap(sm->vm_pages, vm_bitmap_bytes(sm));
    /* 1 bit per page: 256 MiB of guest area per 8 KiB of bitmap; zeroed pages cost nothing
     * until touched. */
    sm->vm_pages = mmap(NULL, vm_bitmap_bytes(sm), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (sm->vm_pages == MAP_FAILED) sm->vm_pages = NULL;
}

/* Chunks of [lo, hi) whose shadow depends on the mapping state: update private pages in
 * place (neighbouring small mappings share them), forget shared choices so they are made
 * again on next use. */
static void vm_update(heap_t *h, uint64_t lo, uint64_t hi, int mapped)
{
    struct shadow_map *sm = &h->sm;
    for (uint64_t a = lo; a < hi; a += PAGE_SIZE) {
        uint64_t p = (a - sm->vm_lo) >> PAGE_SHIFT;
        if (mapped) sm->vm_pages[p >> 3] |= (uint8_t)(1 << (p & 7));
        else sm->vm_pages[p >> 3] &= (uint8_t)~(1 << (p & 7));
    }
    for (uint64_t c = lo >> SHADOW_CHUNK_SHIFT; c <= (hi - 1) >> SHADOW_CHUNK_SHIFT; c++) {
        uint32_t *slot = slot_of(h, c);
        if (*slot >= SHADOW_FIRST_REAL) {
            uint64_t a0 = c << SHADOW_CHUNK_SHIFT, from = lo > a0 ? lo : a0;
            uint64_t to = hi < a0 + SHADOW_CHUNK ? hi : a0 + SHADOW_CHUNK;
            memset(shadow_page(h, *slot) + ((from - a0) >> 3), mapped ? 0 : KASAN_VMALLOC_INVALID, (to - from) >> 3);
            if (!mapped) vec_push(&sm->release, c);      /* maybe empty now: released lazily */
        } else if (*slot) {
            if (*slot == SHADOW_ZERO && !mapped && sm->exposed) sm->must_flush = 1;  /* would hide the new hole */
            *slot = 0;                                   /* resolved again on next use */
        }
        if (mapped && !sm->share) shadow_resolve(h, c);  /* full shadow: populated now */
    }
    sm->remapped = 1;
    if (sm->release.n >= SHADOW_RELEASE_BATCH) shadow_release(h);
}

/* Mapping changes leave the guest's TLB alone (a stale black page is caught by the re-check);
 * only recycled pages force a flush. */
EXPORT void emsan_vm_map(emsan_heap *h, uint64_t lo, uint64_t hi)
{
    if (in_vm(h, lo) && hi > lo && in_vm(h, hi - 1)) vm_update(h, lo, hi, 1);
    shadow_sync(h, 0);
}

EXPORT void emsan_vm_unmap(emsan_heap *h, uint64_t lo, uint64_t hi)
{
    if (in_vm(h, lo) && hi > lo && in_vm(h, hi - 1)) vm_update(h, lo, hi, 0);
    shadow_sync(h, 0);
}

/* The kernel's lazy purge: private pages of chunks that no mapping uses any more go back to
 * the pool, and the chunk shares the black page again. */
void shadow_release(heap_t *h)
{
    struct shadow_map *sm = &h->sm;
    for (size_t i = 0; i < sm->release.n; i++) {
        uint64_t c = sm->release.v[i], base = c << SHADOW_CHUNK_SHIFT;
        uint32_t *slot = slot_of(h, c);
        if (*slot < SHADOW_FIRST_REAL) continue;
        int used = 0;
        for (uint64_t a = base; a < base + SHADOW_CHUNK && !used; a += PAGE_SIZE) used = vm_mapped(h, a);
        if (!used && sm->share) {
            put_page(h, *slot);
            *slot = SHADOW_BLACK;
            h->stats.vm_released++;
        }
    }
    sm->release.n = 0;
    sm->remapped = 1;
}

/* ---- the per-access check of the hook-based generic mode ----------------------------------- */

int in_tolerant_range(heap_t *h, uint64_t pc)
{
    for (size_t i = 0; i + 1 < h->tolerant.n; i += 2)
        if (pc >= h->tolerant.v[i] && pc < h->tolerant.v[i + 1]) return 1;
    return 0;
}

/* Read-ahead (README, "Read-ahead"): optimized string routines finish a scan with the rest of
 * their unrolled vector loop (4 x 16 bytes in glibc's SSE2 and ASIMD routines), past the NUL
 * that ended the string and past its object. Such a load by string code (a piece of it, as the
 * engine hands vector loads over) is no bug when the READAHEAD bytes that end with it hold
 * accessible bytes with a NUL among them: the terminator the function met. A string read past
 * its object for want of a terminator has none there and is reported. */
int shadow_tolerated(heap_t *h, uint64_t pc, uint64_t addr, uint64_t size)
{
    if (size > READAHEAD || !in_tolerant_range(h, pc)) return 0;
    uint64_t end = addr + size, lo = end - READAHEAD;
    if (lo < h->base || lo > end) lo = h->base;
    uint8_t bytes[READAHEAD];
    if (end <= lo || mem_get(h->uc, lo, bytes, end - lo)) return 0;
    for (uint64_t a = lo; a < end; a++) {
        int8_t s = shadow_at(h, a);
        if (bytes[a - lo] == 0 && (s == 0 || (s > 0 && (int8_t)(a & 7) < s)))
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
    if (addr - h->base >= h->size)
        return;                           /* objects live in the heap only (unsigned: below it too) */
    if (LIKELY(!shadow_access_bad(h, addr, (uint64_t)size)))
        return;
    int is_write = type == 17 /* UC_MEM_WRITE */;
    uint64_t pc = reg_get(uc, h->regs[EMSAN_REG_PC]);
    if (!is_write && size >= 8 && shadow_tolerated(h, pc, addr, (uint64_t)size))
        return;
    report_error(h, EMSAN_ERR_ACCESS, addr, (uint64_t)size, is_write, pc, stack_here(h, pc, 0), 0, 0);
}

EXPORT int emsan_shadow_byte(emsan_heap *h, uint64_t addr)
{
    if (addr >= SHADOW_VA_LIMIT)
        return -1;
    return (uint8_t)shadow_at(h, addr);
}
