/* The generic-mode allocator: kmalloc-like size classes with the kernel's redzone table,
 * large objects between guard pages, and the malloc/new/free entry points it stands in for.
 * Everything on the allocation path runs here; Python is reached only through errors. */
#include "internal.h"

static const uint32_t size_classes[NCLASSES] = {8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192, 0};
#define NREAL_CLASSES 13
#define MAX_SMALL 8192

/* mm/kasan/generic.c optimal_redzone() */
static uint32_t optimal_redzone(uint32_t s)
{
    return s <= 64 - 16 ? 16 : s <= 128 - 32 ? 32 : s <= 512 - 64 ? 64 : s <= 4096 - 128 ? 128 :
           s <= (1 << 14) - 256 ? 256 : s <= (1 << 15) - 512 ? 512 : s <= (1 << 16) - 1024 ? 1024 : 2048;
}

static inline uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

EXPORT emsan_heap *emsan_heap_new(void *uc, int is_arm64, uint64_t base, uint64_t size, uint64_t quarantine_bytes,
                                  const int *regs)
{
    heap_t *h = calloc(1, sizeof *h);
    h->uc = uc;
    h->arm64 = is_arm64;
    memcpy(h->regs, regs, sizeof h->regs);
    h->base = base;
    h->size = size;
    h->npages = size >> PAGE_SHIFT;
    h->bump = 1;                         /* page 0 stays a guard */
    if (!shadow_init(h, 1)) { free(h); return NULL; }
    h->page_slab = calloc(h->npages, sizeof *h->page_slab);
    h->q_limit = quarantine_bytes;
    h->string_checks = 1;
    return h;
}

EXPORT void emsan_heap_destroy(emsan_heap *h)
{
    tags_destroy(h);
    mmio_destroy(h);
    shadow_destroy(h);
    for (size_t i = 0; i < h->nslabs; i++) free(h->slabs[i].objs);
    for (int i = 0; i < NCLASSES; i++) free(h->freelist[i].v);
    for (int i = 0; i < 128; i++) free(h->entries[i]);
    free(h->free_runs.v); free(h->tolerant.v); free(h->slabs); free(h->page_slab); free(h->q);
    free(h->depot.pool); free(h->depot.table);
    free(h);
}

EXPORT void emsan_heap_set_stack(emsan_heap *h, uint64_t lo, uint64_t hi) { h->stack_lo = lo; h->stack_hi = hi; }
EXPORT void emsan_set_string_checks(emsan_heap *h, int on) { h->string_checks = on; }
/* Full shadow (the ablation of per-page shadow): every chunk written gets a private page. */
EXPORT void emsan_shadow_full(emsan_heap *h) { h->sm.share = 0; }

EXPORT void *emsan_heap_entry(emsan_heap *h, int fn)
{
    if (fn <= 0 || fn >= 128) return NULL;
    if (!h->entries[fn]) {
        h->entries[fn] = malloc(sizeof(struct entry));
        h->entries[fn]->h = h;
        h->entries[fn]->fn = fn;
    }
    return h->entries[fn];
}

void report_error(heap_t *h, int type, uint64_t addr, uint64_t size, int is_write, uint64_t pc, uint32_t stack,
                  int fn, int kind)
{
    h->stats.errors++;
    if (h->err_count < ERR_RING) {
        emsan_error *e = &h->errs[(h->err_head + h->err_count) % ERR_RING];
        e->type = type; e->is_write = is_write; e->addr = addr; e->size = size; e->pc = pc;
        e->stack = stack; e->fn = fn; e->kind = kind;
        h->err_count++;
    }
    if (h->on_error) h->on_error();      /* Python reports now (multi-shot) */
    else emu_stop(h->uc);                /* Python builds the report once the engine stops */
}

EXPORT void emsan_set_error_callback(emsan_heap *h, void (*cb)(void)) { h->on_error = cb; }

EXPORT int emsan_pop_error(emsan_heap *h, emsan_error *out)
{
    if (!h->err_count) return 0;
    *out = h->errs[h->err_head];
    h->err_head = (h->err_head + 1) % ERR_RING;
    h->err_count--;
    return 1;
}

EXPORT void emsan_get_stats(emsan_heap *h, emsan_stats *out)
{
    *out = h->stats;
    out->quarantine_bytes = h->q_bytes;
    out->quarantine_objects = h->q_len;
    out->heap_pages = h->bump;
}

/* ---- slabs ---------------------------------------------------------------------------------- */

static uint64_t take_pages(heap_t *h, uint64_t n)
{
    /* First fit among released large-object runs, else fresh pages. */
    for (size_t i = 0; i < h->free_runs.n; i++) {
        uint64_t r = h->free_runs.v[i], page = r >> 24, cnt = r & 0xFFFFFF;
        if (cnt >= n) {
            if (cnt == n) h->free_runs.v[i] = h->free_runs.v[--h->free_runs.n];
            else h->free_runs.v[i] = ((page + n) << 24) | (cnt - n);
            return page;
        }
    }
    if (h->bump + n > h->npages) return 0;
    uint64_t page = h->bump;
    h->bump += n;
    return page;
}

static struct slab *new_slab(heap_t *h, uint64_t page, uint32_t npages, int cls)
{
    if (h->nslabs == h->slabs_cap) {
        h->slabs_cap = h->slabs_cap ? h->slabs_cap * 2 : 256;
        h->slabs = realloc(h->slabs, h->slabs_cap * sizeof *h->slabs);
    }
    size_t id = h->nslabs++;
    struct slab *s = &h->slabs[id];
    memset(s, 0, sizeof *s);
    s->start = h->base + (page << PAGE_SHIFT);
    s->npages = npages;
    s->cls = cls;
    for (uint32_t i = 0; i < npages; i++) h->page_slab[page + i] = (uint32_t)id + 1;
    return s;
}

/* Tag modes lay a slab out as the kernel does there: objects rounded up to 16-byte granules,
 * back to back, no redzones; memory no object owns carries the invalid tag. */
static int grow_class_tagged(heap_t *h, int c)
{
    uint32_t slot = (uint32_t)round_up(size_classes[c] > TAG_GRANULE ? size_classes[c] : TAG_GRANULE, TAG_GRANULE);
    uint32_t npages = (uint32_t)(round_up((uint64_t)slot * 8, PAGE_SIZE) >> PAGE_SHIFT);
    uint64_t page = take_pages(h, npages);
    if (!page) return 0;
    struct slab *s = new_slab(h, page, npages, c);
    s->slot = slot;
    s->first = s->start;
    s->nobj = (uint32_t)(((uint64_t)npages << PAGE_SHIFT) / slot);
    s->objs = calloc(s->nobj, sizeof *s->objs);
    tag_set(h, s->start, (uint64_t)npages << PAGE_SHIFT, TAG_INVALID);
    size_t id = (size_t)(s - h->slabs);
    for (uint32_t i = s->nobj; i-- > 0;) vec_push(&h->freelist[c], ((uint64_t)id << 24) | i);
    return 1;
}

static int grow_class(heap_t *h, int c)
{
    if (h->tag_mode) return grow_class_tagged(h, c);
    uint32_t osize = size_classes[c], rz = optimal_redzone(osize);
    uint32_t slot = (uint32_t)round_up(osize + rz, 16);
    uint64_t bytes = round_up(rz, 16) + (uint64_t)slot * 8;
    uint32_t npages = (uint32_t)(round_up(bytes, PAGE_SIZE) >> PAGE_SHIFT);
    uint64_t page = take_pages(h, npages);
    if (!page) return 0;
    struct slab *s = new_slab(h, page, npages, c);
    s->slot = slot;
    s->first = s->start + round_up(rz, 16);
    s->nobj = (uint32_t)((s->start + ((uint64_t)npages << PAGE_SHIFT) - s->first) / slot);
    s->objs = calloc(s->nobj, sizeof *s->objs);
    shadow_fill(h, s->start, (uint64_t)npages << PAGE_SHIFT, KASAN_SLAB_REDZONE);
    size_t id = (size_t)(s - h->slabs);
    for (uint32_t i = s->nobj; i-- > 0;) vec_push(&h->freelist[c], ((uint64_t)id << 24) | i);
    return 1;
}

static inline struct slab *slab_of(heap_t *h, uint64_t handle) { return &h->slabs[handle >> 24]; }
static inline struct obj *obj_of(heap_t *h, uint64_t handle) { return &slab_of(h, handle)->objs[handle & 0xFFFFFF]; }
static inline uint64_t obj_addr(heap_t *h, uint64_t handle)
{
    struct slab *s = slab_of(h, handle);
    return s->first + (uint64_t)(handle & 0xFFFFFF) * s->slot;
}

/* Which object does addr belong to (the kernel's nearest_obj)? Returns its handle or -1. */
static int64_t find_object(heap_t *h, uint64_t addr)
{
    uint64_t off = addr - h->base;
    if (off >= h->size) return -1;
    uint32_t sid = h->page_slab[off >> PAGE_SHIFT];
    if (!sid) return -1;
    struct slab *s = &h->slabs[sid - 1];
    uint64_t idx = 0;
    if (s->cls != LARGE_CLASS && addr >= s->first) {
        idx = (addr - s->first) / s->slot;
        if (idx >= s->nobj) idx = s->nobj - 1;
    }
    return (int64_t)(((uint64_t)(sid - 1) << 24) | idx);
}

static uint64_t alloc_large(heap_t *h, uint64_t size, uint64_t align, int kind, uint32_t stack)
{
    uint64_t extra = align > PAGE_SIZE ? align : 0;
    uint64_t obj_pages = round_up(size + extra, PAGE_SIZE) >> PAGE_SHIFT;
    if (!obj_pages) obj_pages = 1;
    uint64_t npages = obj_pages + 2;                   /* guard page on each side */
    if (npages >= (1 << 24)) return 0;
    uint64_t page = take_pages(h, npages);
    if (!page) return 0;
    struct slab *s = new_slab(h, page, (uint32_t)npages, LARGE_CLASS);
    uint64_t start = s->start + PAGE_SIZE;
    s->first = round_up(start, align > PAGE_SIZE ? align : PAGE_SIZE);
    s->slot = (uint32_t)(obj_pages << PAGE_SHIFT);
    s->nobj = 1;
    s->objs = calloc(1, sizeof *s->objs);
    struct obj *o = &s->objs[0];
    o->size = size; o->kind = (uint8_t)kind; o->state = EMSAN_OBJ_LIVE; o->alloc_stack = stack; o->free_stack = 0;
    if (h->tag_mode) {          /* the object's granules get its tag, the rest stays invalid */
        tag_set(h, s->start, npages << PAGE_SHIFT, TAG_INVALID);
        uint8_t tag = tag_random(h);
        tag_set(h, s->first, round_up(size, TAG_GRANULE), tag);
        tag_ring_record(h, s->first | ((uint64_t)tag << TAG_SHIFT), size, s->slot, stack, 0);
        return s->first | ((uint64_t)tag << TAG_SHIFT);
    }
    shadow_fill(h, s->start, npages << PAGE_SHIFT, KASAN_SLAB_REDZONE);
    uint64_t end = round_up(s->first + size, PAGE_SIZE);
    if (end == s->first) end += PAGE_SIZE;
    shadow_unpoison(h, s->first, size, end, KASAN_PAGE_REDZONE);
    return s->first;
}

static uint64_t do_alloc(heap_t *h, uint64_t size, uint64_t align, int kind)
{
    if (size > (1ULL << 40)) return 0;
    uint32_t stack = stack_here(h, 0, 1);
    h->stats.allocs++;
    h->stats.live_bytes += size;
    if (size > MAX_SMALL || align > 16)
        return alloc_large(h, size, align, kind, stack);
    int c = 0;
    while (size_classes[c] < size) c++;
    if (!h->freelist[c].n && !grow_class(h, c)) return 0;
    uint64_t handle = h->freelist[c].v[--h->freelist[c].n];
    struct slab *s = slab_of(h, handle);
    uint64_t addr = obj_addr(h, handle);
    struct obj *o = obj_of(h, handle);
    o->size = size; o->kind = (uint8_t)kind; o->state = EMSAN_OBJ_LIVE; o->alloc_stack = stack; o->free_stack = 0;
    if (h->tag_mode) {          /* one call tags the whole object: its rounded size, the rest invalid */
        uint8_t tag = tag_random(h);
        uint64_t used = round_up(size, TAG_GRANULE);
        tag_set(h, addr, used, tag);
        if (used < s->slot) tag_set(h, addr + used, s->slot - used, TAG_INVALID);
        uint64_t tagged = addr | ((uint64_t)tag << TAG_SHIFT);
        tag_ring_record(h, tagged, size, size_classes[s->cls], stack, 0);
        return tagged;
    }
    shadow_unpoison(h, addr, size, addr + s->slot, KASAN_SLAB_REDZONE);
    return addr;
}

/* malloc() for interceptors that allocate (strdup), at the intercepted function's entry. */
uint64_t heap_malloc(heap_t *h, uint64_t size) { return do_alloc(h, size, 16, EMSAN_KIND_MALLOC); }

/* Back to reusable once it leaves the quarantine (its shadow stays "freed" until reuse). */
void release_object(heap_t *h, uint64_t handle)
{
    struct slab *s = slab_of(h, handle);
    struct obj *o = obj_of(h, handle);
    o->state = EMSAN_OBJ_FREE;
    if (s->cls == LARGE_CLASS) {
        uint64_t page = (s->start - h->base) >> PAGE_SHIFT;
        for (uint32_t i = 0; i < s->npages; i++) h->page_slab[page + i] = 0;
        vec_push(&h->free_runs, (page << 24) | s->npages);
    } else {
        vec_push(&h->freelist[s->cls], handle);
    }
}

/* Validate and free; returns the freed object's requested size, or -1 when nothing was freed. */
/* The kernel's kasan_byte_accessible() in tag modes: the pointer's tag matches the memory's,
 * and the memory is not free. */
static int tag_accessible(heap_t *h, uint64_t tagged)
{
    int mt = tag_at(h, tagged);
    return mt >= 0 && mt != TAG_INVALID && tag_matches(h, (uint8_t)(tagged >> TAG_SHIFT), (uint8_t)mt);
}

static int64_t do_free(heap_t *h, uint64_t ptr, int kind, int fn, uint64_t pc)
{
    if (!ptr) return 0;
    uint64_t addr = guest_addr(h, ptr);
    int64_t handle = find_object(h, addr);
    if (handle < 0 || obj_addr(h, (uint64_t)handle) != addr) {
        report_error(h, EMSAN_ERR_INVALID_FREE, ptr, 0, 0, pc, stack_here(h, pc, 1), fn, kind);
        return -1;
    }
    struct obj *o = obj_of(h, (uint64_t)handle);
    /* Tag modes judge by the pointer's tag, as the kernel's free path does. */
    if (o->state != EMSAN_OBJ_LIVE || (h->tag_mode && !tag_accessible(h, ptr))) {
        report_error(h, EMSAN_ERR_DOUBLE_FREE, ptr, 0, 0, pc, stack_here(h, pc, 1), fn, kind);
        return -1;
    }
    uint32_t stack = stack_here(h, 0, 1);
    if (o->kind != kind)
        report_error(h, EMSAN_ERR_MISMATCH, ptr, 0, 0, pc, stack_here(h, pc, 1), fn, kind);
    struct slab *s = slab_of(h, (uint64_t)handle);
    o->free_stack = stack;
    h->stats.frees++;
    h->stats.live_bytes -= o->size;
    if (h->tag_mode) {
        uint64_t cache = s->cls == LARGE_CLASS ? s->slot : size_classes[s->cls];
        tag_set(h, addr, s->slot, TAG_INVALID);
        tag_ring_record(h, ptr, o->size, cache, stack, 1);
        int64_t size = (int64_t)o->size;
        release_object(h, (uint64_t)handle);       /* no quarantine in tag modes, as in the kernel */
        return size;
    }
    ptr = addr;
    o->state = EMSAN_OBJ_QUARANTINED;
    uint64_t bytes;
    if (s->cls == LARGE_CLASS) {
        bytes = (uint64_t)s->slot;
        shadow_fill(h, s->first, bytes, KASAN_PAGE_FREE);
    } else {
        bytes = s->slot;
        shadow_fill(h, ptr, round_up(size_classes[s->cls], GRANULE), KASAN_SLAB_FREE);
    }
    quarantine_put(h, (uint64_t)handle, bytes);
    return (int64_t)o->size;
}

EXPORT int emsan_describe(emsan_heap *h, uint64_t addr, emsan_obj_info *out)
{
    memset(out, 0, sizeof *out);
    addr = guest_addr(h, addr);
    int64_t handle = find_object(h, addr);
    if (handle < 0) return 0;
    struct slab *s = slab_of(h, (uint64_t)handle);
    struct obj *o = obj_of(h, (uint64_t)handle);
    out->found = 1;
    out->state = o->state;
    out->kind = o->kind;
    out->large = s->cls == LARGE_CLASS;
    out->start = obj_addr(h, (uint64_t)handle);
    out->size = o->size;
    out->cache_size = s->cls == LARGE_CLASS ? s->slot : size_classes[s->cls];
    out->alloc_stack = o->alloc_stack;
    out->free_stack = o->free_stack;
    return 1;
}

void return_to_caller(heap_t *h, uint64_t value)
{
    void *uc = h->uc;
    reg_set(uc, h->regs[EMSAN_REG_RET], value);
    if (h->arm64) {
        reg_set(uc, h->regs[EMSAN_REG_PC], reg_get(uc, h->regs[EMSAN_REG_LR]));
    } else {
        uint64_t sp = reg_get(uc, h->regs[EMSAN_REG_SP]), ret = 0;
        mem_get(uc, sp, &ret, 8);
        reg_set(uc, h->regs[EMSAN_REG_SP], sp + 8);
        reg_set(uc, h->regs[EMSAN_REG_PC], ret);    /* last: makes Unicorn leave the block */
    }
}

static void copy_guest(heap_t *h, uint64_t dst, uint64_t src, uint64_t n)
{
    uint8_t buf[4096];
    for (uint64_t done = 0; done < n;) {
        size_t chunk = n - done < sizeof buf ? (size_t)(n - done) : sizeof buf;
        mem_get(h->uc, guest_addr(h, src + done), buf, chunk);
        mem_put(h->uc, guest_addr(h, dst + done), buf, chunk);
        done += chunk;
    }
}

static void zero_guest(heap_t *h, uint64_t dst, uint64_t n)
{
    static const uint8_t zeros[4096];
    for (uint64_t done = 0; done < n;) {
        size_t chunk = n - done < sizeof zeros ? (size_t)(n - done) : sizeof zeros;
        mem_put(h->uc, guest_addr(h, dst + done), zeros, chunk);
        done += chunk;
    }
}

static uint64_t do_realloc(heap_t *h, uint64_t ptr, uint64_t size, uint64_t pc, int fn)
{
    if (!ptr) return do_alloc(h, size, 16, EMSAN_KIND_MALLOC);
    uint64_t addr = guest_addr(h, ptr);
    int64_t handle = find_object(h, addr);
    int freed = handle >= 0 && obj_addr(h, (uint64_t)handle) == addr &&
                (h->tag_mode ? !tag_accessible(h, ptr) : obj_of(h, (uint64_t)handle)->state != EMSAN_OBJ_LIVE);
    if (freed) {
        /* like krealloc()'s kasan_check_byte(): a use of freed memory, and no reallocation */
        report_error(h, EMSAN_ERR_ACCESS, ptr, 1, 0, pc, stack_here(h, pc, 1), fn, 0);
        return 0;
    }
    if (handle < 0 || obj_addr(h, (uint64_t)handle) != addr) {
        do_free(h, ptr, EMSAN_KIND_MALLOC, fn, pc);          /* reports invalid-free */
        return 0;
    }
    if (!size) {
        do_free(h, ptr, EMSAN_KIND_MALLOC, fn, pc);
        return 0;
    }
    uint64_t old = obj_of(h, (uint64_t)handle)->size;
    uint64_t p = do_alloc(h, size, 16, EMSAN_KIND_MALLOC);
    if (!p) return 0;
    copy_guest(h, p, ptr, old < size ? old : size);
    do_free(h, ptr, EMSAN_KIND_MALLOC, fn, pc);
    return p;
}

static int is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

static void allocator_fn(heap_t *h, int fn)
{
    void *uc = h->uc;
    uint64_t a0 = reg_get(uc, h->regs[EMSAN_REG_ARG0]);
    uint64_t a1 = reg_get(uc, h->regs[EMSAN_REG_ARG0 + 1]);
    uint64_t a2 = reg_get(uc, h->regs[EMSAN_REG_ARG0 + 2]);
    uint64_t pc = reg_get(uc, h->regs[EMSAN_REG_PC]);
    uint64_t r = 0;
    switch (fn) {
    case EMSAN_FN_MALLOC: r = do_alloc(h, a0, 16, EMSAN_KIND_MALLOC); break;
    case EMSAN_FN_NEW: case EMSAN_FN_NEW_NOTHROW: r = do_alloc(h, a0, 16, EMSAN_KIND_NEW); break;
    case EMSAN_FN_NEW_ARRAY: case EMSAN_FN_NEW_ARRAY_NOTHROW: r = do_alloc(h, a0, 16, EMSAN_KIND_NEW_ARRAY); break;
    case EMSAN_FN_NEW_ALIGNED: case EMSAN_FN_NEW_ALIGNED_NOTHROW: r = do_alloc(h, a0, a1 > 16 ? a1 : 16, EMSAN_KIND_NEW); break;
    case EMSAN_FN_NEW_ARRAY_ALIGNED: case EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW:
        r = do_alloc(h, a0, a1 > 16 ? a1 : 16, EMSAN_KIND_NEW_ARRAY); break;
    case EMSAN_FN_CALLOC: case EMSAN_FN_REALLOCARRAY: {
        unsigned __int128 total = (unsigned __int128)(fn == EMSAN_FN_CALLOC ? a0 : a1) * (fn == EMSAN_FN_CALLOC ? a1 : a2);
        if (total >> 64) { r = 0; break; }
        if (fn == EMSAN_FN_CALLOC) {
            r = do_alloc(h, (uint64_t)total, 16, EMSAN_KIND_MALLOC);
            if (r) zero_guest(h, r, (uint64_t)total);
        } else {
            r = do_realloc(h, a0, (uint64_t)total, pc, fn);
        }
        break;
    }
    case EMSAN_FN_REALLOC: r = do_realloc(h, a0, a1, pc, fn); break;
    case EMSAN_FN_MEMALIGN: case EMSAN_FN_ALIGNED_ALLOC:
        r = is_pow2(a0) ? do_alloc(h, a1, a0 > 16 ? a0 : 16, EMSAN_KIND_MALLOC) : 0; break;
    case EMSAN_FN_VALLOC: r = do_alloc(h, a0, PAGE_SIZE, EMSAN_KIND_MALLOC); break;
    case EMSAN_FN_PVALLOC: r = do_alloc(h, round_up(a0 ? a0 : 1, PAGE_SIZE), PAGE_SIZE, EMSAN_KIND_MALLOC); break;
    case EMSAN_FN_POSIX_MEMALIGN:
        if (!is_pow2(a1) || a1 % 8) { r = 22; break; }             /* EINVAL */
        {
            uint64_t p = do_alloc(h, a2, a1 > 16 ? a1 : 16, EMSAN_KIND_MALLOC);
            if (!p) { r = 12; break; }                                /* ENOMEM */
            mem_put(uc, guest_addr(h, a0), &p, 8);
            r = 0;
        }
        break;
    case EMSAN_FN_USABLE_SIZE: {
        uint64_t addr = guest_addr(h, a0);
        int64_t handle = find_object(h, addr);
        r = (a0 && handle >= 0 && obj_addr(h, (uint64_t)handle) == addr) ? obj_of(h, (uint64_t)handle)->size : 0;
        if (a0 && handle >= 0 && (h->tag_mode ? !tag_accessible(h, a0) : obj_of(h, (uint64_t)handle)->state != EMSAN_OBJ_LIVE)) {
            r = 0;          /* like ksize(): asking about a freed object is a use after free */
            report_error(h, EMSAN_ERR_ACCESS, a0, 1, 0, pc, stack_here(h, pc, 1), fn, 0);
        }
        break;
    }
    case EMSAN_FN_FREE: do_free(h, a0, EMSAN_KIND_MALLOC, fn, pc); break;
    case EMSAN_FN_DELETE: do_free(h, a0, EMSAN_KIND_NEW, fn, pc); break;
    case EMSAN_FN_DELETE_ARRAY: do_free(h, a0, EMSAN_KIND_NEW_ARRAY, fn, pc); break;
    case EMSAN_FN_TAG_MEMORY:               /* __hwasan_tag_memory(p, tag, size) */
        if (h->tag_mode) emsan_tag_memory(h, a0, (uint8_t)a1, a2);
        break;
    default: return;
    }
    return_to_caller(h, r);
}

/* Unicorn UC_HOOK_CODE callback on the first instruction of each function emsan stands in for. */
EXPORT void emsan_entry_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)address; (void)size;
    struct entry *e = ud;
    if (e->fn < EMSAN_FN_STRLEN) {
        allocator_fn(e->h, e->fn);
        shadow_sync(e->h, 0);            /* compiler-assisted mode: the guest sees the new shadow */
    }
    else if (e->h->string_checks) intercept_string_fn(e->h, e->fn);
}

/* A range some other agent touches on the guest's behalf (a system call's buffer). */
EXPORT int emsan_check_range_at(emsan_heap *h, uint64_t addr, uint64_t size, int is_write, uint64_t pc)
{
    if (!size || addr + size < addr) return 0;
    if (!(h->tag_mode ? tag_bad(h, addr, size) : shadow_range_bad(h, addr, addr + size))) return 0;
    report_error(h, EMSAN_ERR_ACCESS, addr, size, is_write, pc, stack_here(h, pc, 0), 0, 0);
    return 1;
}

/* Check [addr, addr+size) for a function entitled to touch exactly that range (the kernel's
 * check_range): one report for the whole range. Returns nonzero if it was bad. */
int check_range(heap_t *h, uint64_t addr, uint64_t size, int is_write, int fn)
{
    if (!size) return 0;
    uint64_t lo = addr, hi = addr + size;
    if (hi < lo) {                                       /* a negative size: always a bug */
        uint64_t pc = reg_get(h->uc, h->regs[EMSAN_REG_PC]);
        report_error(h, EMSAN_ERR_ACCESS, addr, size, is_write, pc, stack_here(h, pc, 1), fn, 0);
        return 1;
    }
    if (!(h->tag_mode ? tag_bad(h, addr, size) : shadow_range_bad(h, lo, hi))) return 0;
    uint64_t pc = reg_get(h->uc, h->regs[EMSAN_REG_PC]);
    report_error(h, EMSAN_ERR_ACCESS, addr, size, is_write, pc, stack_here(h, pc, 1), fn, 0);
    return 1;
}
