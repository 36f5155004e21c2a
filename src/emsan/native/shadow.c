/* Shadow memory: one byte per 8-byte granule with the kernel's generic encoding, for every
 * guest address below 2^44, kept per page (as proposed for the kernel): one 4 KiB shadow page covers 32 KiB
 * of memory. Chunks that need no private shadow share read-only pages (all accessible, "no
 * object here", freed, never-touch "black"); a private page replaces them when objects
 * arrive. All pages live in one host pool, so the same bytes can be mapped into the guest at
 * EMSAN_SHADOW_OFFSET for compiler-instrumented code (gshadow.c). */
#include <sys/mman.h>
#include "kasan.h"

/* Content of each shared page. */
static const uint8_t shared_value[SHADOW_FIRST_REAL] = {
    [SHADOW_ZERO] = 0, [SHADOW_NONE] = KASAN_SLAB_REDZONE, [SHADOW_FREED] = KASAN_PAGE_FREE,
    [SHADOW_BLACK] = KASAN_VMALLOC_INVALID,
};

/* Full shadow (the ablation of per-page shadow): every chunk written gets a private page. */
EXPORT void emsan_shadow_full(emsan_kasan *k) { k->sm.share = 0; }

static size_t vm_bitmap_bytes(const struct shadow_map *sm) { return (sm->vm_size >> PAGE_SHIFT) / 8 + 1; }

int shadow_init(kasan_t *k, int share)
{
    struct shadow_map *sm = &k->sm;
    sm->pool = mmap(NULL, SHADOW_POOL_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                    -1, 0);
    if (sm->pool == MAP_FAILED) { sm->pool = NULL; return 0; }
    for (uint32_t i = 1; i < SHADOW_FIRST_REAL; i++)
        memset(sm->pool + ((uint64_t)i << PAGE_SHIFT), shared_value[i], PAGE_SIZE);
    sm->next = SHADOW_FIRST_REAL;
    sm->limit = SHADOW_POOL_PAGES;
    sm->share = share;
    return 1;
}

void shadow_destroy(kasan_t *k)
{
    struct shadow_map *sm = &k->sm;
    for (size_t i = 0; i < SHADOW_DIR_SIZE; i++) free(sm->dir[i]);
    free(sm->spare.v);
    if (sm->vm_pages) munmap(sm->vm_pages, vm_bitmap_bytes(sm));
    free(sm->release.v);
    if (sm->pool) munmap(sm->pool, SHADOW_POOL_BYTES);
}

static uint32_t *slot_of(kasan_t *k, uint64_t chunk)
{
    static uint32_t lost;              /* the slot of a chunk whose directory leaf could not be made */
    uint32_t **leaf = &k->sm.dir[chunk >> SHADOW_LEAF_SHIFT];
    if (UNLIKELY(!*leaf)) *leaf = calloc(SHADOW_LEAF_SIZE, sizeof **leaf);
    if (UNLIKELY(!*leaf)) { out_of("host memory for shadow"); emu_stop(k->rt->uc); lost = SHADOW_ZERO; return &lost; }
    return &(*leaf)[chunk & (SHADOW_LEAF_SIZE - 1)];
}

/* The page a chunk uses when nothing has been said about it: emsan's heap has no objects
 * there yet, the mmap ("vmalloc") area is resolved from what the guest has mapped, and
 * anything else is ordinary memory. */
static uint32_t default_page(kasan_t *k, uint64_t chunk);

uint32_t shadow_resolve(kasan_t *k, uint64_t chunk)
{
    uint32_t *slot = slot_of(k, chunk);
    if (!*slot) *slot = default_page(k, chunk);
    return *slot;
}

static uint32_t new_page(kasan_t *k, uint32_t copy_of)
{
    struct shadow_map *sm = &k->sm;
    uint32_t pg;
    if (sm->spare.n) pg = (uint32_t)sm->spare.v[--sm->spare.n];
    else if (sm->next < sm->limit) pg = sm->next++;
    else { out_of("shadow memory"); emu_stop(k->rt->uc); return 0; }
    memcpy(shadow_page(k, pg), shadow_page(k, copy_of), PAGE_SIZE);
    k->stats.shadow_pages++;
    if (k->stats.shadow_pages > k->stats.shadow_pages_peak) k->stats.shadow_pages_peak = k->stats.shadow_pages;
    return pg;
}

static void put_page(kasan_t *k, uint32_t pg)
{
    if (pg < SHADOW_FIRST_REAL) return;
    madvise(shadow_page(k, pg), PAGE_SIZE, MADV_DONTNEED);     /* resident no more */
    vec_push(&k->sm.spare, pg);
    k->stats.shadow_pages--;
    if (k->sm.exposed) k->sm.must_flush = 1;   /* the guest's TLB may still map it */
}

/* Point a chunk at another page; the guest's TLB may still map the old one (gshadow.c). */
/* A chunk changes pages. A guest TLB still mapping a poisoned shared page only makes the
 * guest's checks fail, and those are re-checked (gshadow.c): that flush can wait. One still
 * mapping the zero page would hide poison, and a recycled page anything: flush before the
 * guest runs again. */
static void remap(kasan_t *k, uint32_t *slot, uint32_t pg)
{
    if (*slot == SHADOW_ZERO && k->sm.exposed) k->sm.must_flush = 1;
    put_page(k, *slot);
    *slot = pg;
    k->sm.remapped = 1;
}

static void set_chunk(kasan_t *k, uint64_t chunk, uint32_t pg)
{
    uint32_t *slot = slot_of(k, chunk);
    if (*slot != pg) remap(k, slot, pg);
}

/* Copy-on-write: give a chunk a private page before it is written. */
uint8_t *shadow_own(kasan_t *k, uint64_t chunk)
{
    uint32_t pg = shadow_resolve(k, chunk);
    if (pg >= SHADOW_FIRST_REAL) return shadow_page(k, pg);
    uint32_t np = new_page(k, pg);
    if (!np) return NULL;
    remap(k, slot_of(k, chunk), np);
    return shadow_page(k, np);
}

static uint32_t shared_for(uint8_t value)
{
    return value == 0 ? SHADOW_ZERO : value == KASAN_SLAB_REDZONE ? SHADOW_NONE :
           value == KASAN_PAGE_FREE ? SHADOW_FREED : value == KASAN_VMALLOC_INVALID ? SHADOW_BLACK : 0;
}

/* Set the shadow of [addr, addr+len) (granule aligned) to `value`. */
void shadow_fill(kasan_t *k, uint64_t addr, uint64_t len, uint8_t value)
{
    if (k->mm && value) mmio_poisoned(k, addr, len);
    if (k->il) inline_fill(k, addr, len, value);
    uint64_t end = addr + len;
    uint32_t shared = k->sm.share ? shared_for(value) : 0;
    while (addr < end) {
        uint64_t chunk = addr >> SHADOW_CHUNK_SHIFT;
        uint64_t chunk_end = (chunk + 1) << SHADOW_CHUNK_SHIFT;
        uint64_t stop = end < chunk_end ? end : chunk_end;
        if (shared && (addr & (SHADOW_CHUNK - 1)) == 0 && stop == chunk_end) {
            set_chunk(k, chunk, shared);
        } else {
            uint8_t *p = shadow_own(k, chunk);
            if (p) memset(p + ((addr & (SHADOW_CHUNK - 1)) >> 3), value, (stop - addr) >> 3);
        }
        addr = stop;
    }
}

/* Make [addr, addr+size) accessible, with the kernel's partial last granule, and poison the
 * rest up to `poison_to` with `rz`. addr is granule aligned. */
void shadow_unpoison(kasan_t *k, uint64_t addr, uint64_t size, uint64_t poison_to, uint8_t rz)
{
    uint64_t full = size & ~(uint64_t)(GRANULE - 1);
    if (full)
        shadow_fill(k, addr, full, 0);
    uint64_t rest = addr + full;
    if (size & (GRANULE - 1)) {
        uint8_t *p = shadow_own(k, rest >> SHADOW_CHUNK_SHIFT);
        if (p) p[(rest & (SHADOW_CHUNK - 1)) >> 3] = (uint8_t)(size & (GRANULE - 1));
        if (k->mm) mmio_poisoned(k, rest, GRANULE);
        if (k->il) inline_fill(k, rest, GRANULE, (uint8_t)(size & (GRANULE - 1)));
        rest += GRANULE;
    }
    if (poison_to > rest)
        shadow_fill(k, rest, poison_to - rest, rz);
}

/* Are the n shadow bytes at p all zero? Eight at a time (the kernel's memory_is_nonzero()). */
static int all_zero(const uint8_t *p, uint64_t n)
{
    while (n && ((uintptr_t)p & 7)) { if (*p++) return 0; n--; }
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        if (w) return 0;
    }
    while (n--) if (*p++) return 0;
    return 1;
}

/* Is any byte of [addr, addr+size) poisoned? (memory_is_poisoned_n, across pages): the whole
 * granules a chunk's shadow page at a time, a shared all-accessible page without reading it. */
int shadow_bad(kasan_t *k, uint64_t addr, uint64_t size)
{
    uint64_t last = addr + size - 1;
    if (UNLIKELY(last >= SHADOW_VA_LIMIT || last < addr))
        return 1;
    const unsigned per_chunk = SHADOW_CHUNK_SHIFT - 3;     /* log2 of the granules in a chunk */
    for (uint64_t g = addr >> 3, glast = last >> 3; g < glast;) {
        uint64_t chunk = g >> per_chunk, end = (chunk + 1) << per_chunk;
        uint64_t stop = glast < end ? glast : end;
        uint32_t pg = shadow_resolve(k, chunk);
        if (pg != SHADOW_ZERO && !all_zero(shadow_page(k, pg) + (g & ((1ULL << per_chunk) - 1)), stop - g))
            return 1;
        g = stop;
    }
    int8_t s = shadow_at(k, last);
    return s != 0 && (s < 0 || (int8_t)(last & 7) >= s);
}

/* Is any byte of [lo, hi) poisoned where shadow says something: emsan's heap and the mmap
 * area (elsewhere all memory is accessible, unless the guest poisons its own)? */
int shadow_range_bad(kasan_t *k, uint64_t lo, uint64_t hi)
{
    /* A guest that sees the shadow (compiler-assisted mode) poisons its stack, alloca and
     * global redzones there itself: interceptors and system calls check all of it. */
    if (k->sm.exposed) {
        if (hi > SHADOW_VA_LIMIT) hi = SHADOW_VA_LIMIT;
        return lo < hi && shadow_bad(k, lo, hi - lo);
    }
    const uint64_t area[2][2] = {{k->base, k->base + k->size}, {k->sm.vm_lo, k->sm.vm_lo + k->sm.vm_size}};
    for (int i = 0; i < 2; i++) {
        uint64_t a = lo > area[i][0] ? lo : area[i][0], b = hi < area[i][1] ? hi : area[i][1];
        if (a < b && shadow_bad(k, a, b - a)) return 1;
    }
    return 0;
}

/* ---- the mmap ("vmalloc") area: shadow resolved lazily from what the guest has mapped -------- */

/* One bit per guest page of the area: mapped or not. */
static inline int vm_mapped(kasan_t *k, uint64_t addr)
{
    uint64_t p = (addr - k->sm.vm_lo) >> PAGE_SHIFT;
    return (k->sm.vm_pages[p >> 3] >> (p & 7)) & 1;
}

static inline int in_vm(kasan_t *k, uint64_t addr) { return k->sm.vm_pages && addr - k->sm.vm_lo < k->sm.vm_size; }

/* Populate a chunk of the area: all mapped shares the zero page, nothing mapped the black
 * page, a mix gets a private page with 00 for mapped pages and F8 for the holes. */
static uint32_t vm_page(kasan_t *k, uint64_t chunk)
{
    uint64_t base = chunk << SHADOW_CHUNK_SHIFT;
    unsigned mapped = 0, n = SHADOW_CHUNK >> PAGE_SHIFT;
    for (unsigned i = 0; i < n; i++) mapped += (unsigned)vm_mapped(k, base + ((uint64_t)i << PAGE_SHIFT));
    if (k->sm.share && mapped == 0) return SHADOW_BLACK;
    if (k->sm.share && mapped == n) return SHADOW_ZERO;
    uint32_t pg = new_page(k, SHADOW_BLACK);
    if (!pg) return SHADOW_BLACK;
    k->stats.vm_populated++;
    uint8_t *p = shadow_page(k, pg);
    for (unsigned i = 0; i < n; i++)
        if (vm_mapped(k, base + ((uint64_t)i << PAGE_SHIFT)))
            memset(p + i * (PAGE_SIZE >> 3), 0, PAGE_SIZE >> 3);
    return pg;
}

static uint32_t default_page(kasan_t *k, uint64_t chunk)
{
    uint64_t addr = chunk << SHADOW_CHUNK_SHIFT;
    if (addr - k->base < k->size) return SHADOW_NONE;
    if (in_vm(k, addr)) return vm_page(k, chunk);
    return SHADOW_ZERO;
}

EXPORT void emsan_vm_area(emsan_kasan *k, uint64_t lo, uint64_t hi)
{
    struct shadow_map *sm = &k->sm;
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
static void vm_update(kasan_t *k, uint64_t lo, uint64_t hi, int mapped)
{
    struct shadow_map *sm = &k->sm;
    for (uint64_t a = lo; a < hi; a += PAGE_SIZE) {
        uint64_t p = (a - sm->vm_lo) >> PAGE_SHIFT;
        if (mapped) sm->vm_pages[p >> 3] |= (uint8_t)(1 << (p & 7));
        else sm->vm_pages[p >> 3] &= (uint8_t)~(1 << (p & 7));
    }
    for (uint64_t c = lo >> SHADOW_CHUNK_SHIFT; c <= (hi - 1) >> SHADOW_CHUNK_SHIFT; c++) {
        uint32_t *slot = slot_of(k, c);
        if (*slot >= SHADOW_FIRST_REAL) {
            uint64_t a0 = c << SHADOW_CHUNK_SHIFT, from = lo > a0 ? lo : a0;
            uint64_t to = hi < a0 + SHADOW_CHUNK ? hi : a0 + SHADOW_CHUNK;
            memset(shadow_page(k, *slot) + ((from - a0) >> 3), mapped ? 0 : KASAN_VMALLOC_INVALID, (to - from) >> 3);
            if (!mapped) vec_push(&sm->release, c);      /* maybe empty now: released lazily */
        } else if (*slot) {
            if (*slot == SHADOW_ZERO && !mapped && sm->exposed) sm->must_flush = 1;  /* would hide the new hole */
            *slot = 0;                                   /* resolved again on next use */
        }
        if (mapped && !sm->share) shadow_resolve(k, c);  /* full shadow: populated now */
    }
    sm->remapped = 1;
    if (sm->release.n >= SHADOW_RELEASE_BATCH) shadow_release(k);
}

/* Mapping changes leave the guest's TLB alone (a stale black page is caught by the re-check);
 * only recycled pages force a flush. */
EXPORT void emsan_vm_map(emsan_kasan *k, uint64_t lo, uint64_t hi)
{
    if (in_vm(k, lo) && hi > lo && in_vm(k, hi - 1)) vm_update(k, lo, hi, 1);
    shadow_sync(k, 0);
}

EXPORT void emsan_vm_unmap(emsan_kasan *k, uint64_t lo, uint64_t hi)
{
    if (in_vm(k, lo) && hi > lo && in_vm(k, hi - 1)) vm_update(k, lo, hi, 0);
    shadow_sync(k, 0);
}

/* The kernel's lazy purge: private pages of chunks that no mapping uses any more go back to
 * the pool, and the chunk shares the black page again. */
void shadow_release(kasan_t *k)
{
    struct shadow_map *sm = &k->sm;
    for (size_t i = 0; i < sm->release.n; i++) {
        uint64_t c = sm->release.v[i], base = c << SHADOW_CHUNK_SHIFT;
        uint32_t *slot = slot_of(k, c);
        if (*slot < SHADOW_FIRST_REAL) continue;
        int used = 0;
        for (uint64_t a = base; a < base + SHADOW_CHUNK && !used; a += PAGE_SIZE) used = vm_mapped(k, a);
        if (!used && sm->share) {
            put_page(k, *slot);
            *slot = SHADOW_BLACK;
            k->stats.vm_released++;
        }
    }
    sm->release.n = 0;
    sm->remapped = 1;
}

/* At most `pages` pool pages (4 KiB each) for private shadow (--shadow-limit). */
EXPORT void emsan_shadow_set_limit(emsan_kasan *k, uint64_t pages)
{
    k->sm.limit = pages < SHADOW_FIRST_REAL + 1 ? SHADOW_FIRST_REAL + 1 : pages > SHADOW_POOL_PAGES ? SHADOW_POOL_PAGES
                                                                                                    : (uint32_t)pages;
}

EXPORT int emsan_shadow_byte(emsan_kasan *k, uint64_t addr)
{
    if (addr >= SHADOW_VA_LIMIT)
        return -1;
    return (uint8_t)shadow_at(k, addr);
}
