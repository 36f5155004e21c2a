/* emsan's allocator, the same in every KASAN mode: kmalloc-like size classes, large objects
 * between guard pages, and the malloc/new/free entry points it stands in for. What a mode
 * changes (redzones, poisoning, tags, the quarantine, extra records) goes through k->ops.
 * Everything on the allocation path runs here; Python is reached only through errors. */
#include "kasan.h"

static const uint32_t size_classes[NCLASSES] = {8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192, 0};
#define MAX_SMALL 8192

uint64_t cache_size(const struct slab *s) { return s->cls == LARGE_CLASS ? s->slot : size_classes[s->cls]; }

/* ---- slabs ---------------------------------------------------------------------------------- */

/* First fit among released large-object runs, else fresh pages; 0 when the heap is full. */
static uint64_t take_pages(kasan_t *k, uint64_t n)
{
    uint64_t page = take_run(&k->free_runs, n);
    if (page != UINT64_MAX) return page;
    if (k->bump + n > k->npages) return 0;
    page = k->bump;
    k->bump += n;
    return page;
}

static struct slab *new_slab(kasan_t *k, uint64_t page, uint32_t npages, int cls)
{
    if (k->nslabs == k->slabs_cap) {
        size_t cap = k->slabs_cap ? k->slabs_cap * 2 : 256;
        struct slab *slabs = realloc(k->slabs, cap * sizeof *slabs);
        if (!slabs) { out_of("host memory for the heap's slabs"); emu_stop(k->rt->uc); return NULL; }
        k->slabs = slabs;
        k->slabs_cap = cap;
    }
    size_t id = k->nslabs++;
    struct slab *s = &k->slabs[id];
    memset(s, 0, sizeof *s);
    s->start = k->base + (page << PAGE_SHIFT);
    s->npages = npages;
    s->cls = cls;
    for (uint32_t i = 0; i < npages; i++) k->page_slab[page + i] = (uint32_t)id + 1;
    return s;
}

/* A new slab for size class c: a leading redzone, then objects each followed by its redzone
 * (tag modes: objects rounded up to 16-byte granules, back to back), all poisoned. */
static int grow_class(kasan_t *k, int c)
{
    uint32_t osize = size_classes[c], rz = k->ops->redzone(osize);
    uint32_t slot = (uint32_t)round_up(osize + rz < 16 ? 16 : osize + rz, 16);
    uint64_t bytes = round_up(rz, 16) + (uint64_t)slot * 8;
    uint32_t npages = (uint32_t)(round_up(bytes, PAGE_SIZE) >> PAGE_SHIFT);
    uint64_t page = take_pages(k, npages);
    if (!page) return 0;
    struct slab *s = new_slab(k, page, npages, c);
    if (!s) return 0;
    s->slot = slot;
    s->first = s->start + round_up(rz, 16);
    s->nobj = (uint32_t)((s->start + ((uint64_t)npages << PAGE_SHIFT) - s->first) / slot);
    s->objs = calloc(s->nobj, sizeof *s->objs);
    if (!s->objs) { out_of("host memory for the heap's objects"); emu_stop(k->rt->uc); return 0; }
    k->ops->poison(k, s->start, (uint64_t)npages << PAGE_SHIFT, KASAN_SLAB_REDZONE);
    size_t id = (size_t)(s - k->slabs);
    for (uint32_t i = s->nobj; i-- > 0;) vec_push(&k->freelist[c], ((uint64_t)id << 24) | i);
    return 1;
}

/* Which object does addr belong to (the kernel's nearest_obj)? Returns its handle or -1. */
int64_t find_object(kasan_t *k, uint64_t addr)
{
    uint64_t off = addr - k->base;
    if (off >= k->size) return -1;
    uint32_t sid = k->page_slab[off >> PAGE_SHIFT];
    if (!sid) return -1;
    struct slab *s = &k->slabs[sid - 1];
    uint64_t idx = 0;
    if (s->cls != LARGE_CLASS && addr >= s->first) {
        idx = (addr - s->first) / s->slot;
        if (idx >= s->nobj) idx = s->nobj - 1;
    }
    return (int64_t)(((uint64_t)(sid - 1) << 24) | idx);
}

static void set_live(struct obj *o, uint64_t size, int kind, uint32_t stack)
{
    o->size = size; o->kind = (uint8_t)kind; o->state = EMSAN_OBJ_LIVE; o->alloc_stack = stack; o->free_stack = 0;
}

/* Objects above 8 KiB and over-aligned ones: pages of their own between guard pages. */
static uint64_t alloc_large(kasan_t *k, uint64_t size, uint64_t align, int kind, uint32_t stack)
{
    uint64_t extra = align > PAGE_SIZE ? align : 0;
    uint64_t obj_pages = round_up(size + extra, PAGE_SIZE) >> PAGE_SHIFT;
    if (!obj_pages) obj_pages = 1;
    uint64_t npages = obj_pages + 2;                   /* guard page on each side */
    if (npages >= (1 << 24)) return 0;
    uint64_t page = take_pages(k, npages);
    if (!page) return 0;
    struct slab *s = new_slab(k, page, (uint32_t)npages, LARGE_CLASS);
    if (!s) return 0;
    uint64_t start = s->start + PAGE_SIZE;
    s->first = round_up(start, align > PAGE_SIZE ? align : PAGE_SIZE);
    s->slot = (uint32_t)(obj_pages << PAGE_SHIFT);
    s->nobj = 1;
    s->objs = calloc(1, sizeof *s->objs);
    if (!s->objs) { out_of("host memory for the heap's objects"); emu_stop(k->rt->uc); return 0; }
    set_live(&s->objs[0], size, kind, stack);
    k->ops->poison(k, s->start, npages << PAGE_SHIFT, KASAN_SLAB_REDZONE);
    uint64_t end = round_up(s->first + size, PAGE_SIZE);
    if (end == s->first) end += PAGE_SIZE;
    uint64_t ptr = k->ops->unpoison(k, s->first, size, end, KASAN_PAGE_REDZONE);
    if (k->ops->save_track) k->ops->save_track(k, ptr, size, s->slot, stack, 0);
    return ptr;
}

static uint64_t do_alloc(kasan_t *k, uint64_t size, uint64_t align, int kind)
{
    if (size > (1ULL << 40)) return 0;
    uint32_t stack = stack_here(k->rt, 0, 1);
    k->stats.allocs++;
    k->stats.live_bytes += size;
    if (align < 16) align = 16;
    if (size > MAX_SMALL || align > 16)
        return alloc_large(k, size, align, kind, stack);
    int c = 0;
    while (size_classes[c] < size) c++;
    if (!k->freelist[c].n && !grow_class(k, c)) return 0;
    uint64_t handle = k->freelist[c].v[--k->freelist[c].n];
    struct slab *s = slab_of(k, handle);
    uint64_t addr = obj_addr(k, handle);
    set_live(obj_of(k, handle), size, kind, stack);
    uint64_t ptr = k->ops->unpoison(k, addr, size, addr + s->slot, KASAN_SLAB_REDZONE);
    if (k->ops->save_track) k->ops->save_track(k, ptr, size, size_classes[s->cls], stack, 0);
    return ptr;
}

/* malloc() for the interceptors that allocate (strdup), at the intercepted function's entry. */
uint64_t heap_malloc(kasan_t *k, uint64_t size) { return do_alloc(k, size, 16, EMSAN_KIND_MALLOC); }

/* Back to reusable once it leaves the quarantine (its memory stays poisoned until reuse). */
void release_object(kasan_t *k, uint64_t handle)
{
    struct slab *s = slab_of(k, handle);
    struct obj *o = obj_of(k, handle);
    o->state = EMSAN_OBJ_FREE;
    if (s->cls == LARGE_CLASS) {
        uint64_t page = (s->start - k->base) >> PAGE_SHIFT;
        for (uint32_t i = 0; i < s->npages; i++) k->page_slab[page + i] = 0;
        vec_push(&k->free_runs, (page << 24) | s->npages);
    } else {
        vec_push(&k->freelist[s->cls], handle);
    }
}

/* The live object that starts exactly at ptr (its handle), or -1. */
static int64_t object_at(kasan_t *k, uint64_t ptr)
{
    uint64_t addr = guest_addr(k->rt, ptr);
    int64_t handle = find_object(k, addr);
    return handle >= 0 && obj_addr(k, (uint64_t)handle) == addr ? handle : -1;
}

/* Validate and free; returns the freed object's requested size, or -1 when nothing was freed. */
static int64_t do_free(kasan_t *k, uint64_t ptr, int kind, int fn, uint64_t pc)
{
    rt_t *rt = k->rt;
    if (!ptr) return 0;
    int64_t handle = object_at(k, ptr);
    if (handle < 0) {
        report_error(rt, EMSAN_ERR_INVALID_FREE, ptr, 0, 0, pc, stack_here(rt, pc, 1), fn, kind);
        return -1;
    }
    struct obj *o = obj_of(k, (uint64_t)handle);
    if (o->state != EMSAN_OBJ_LIVE || !k->ops->accessible(k, o, ptr)) {
        report_error(rt, EMSAN_ERR_DOUBLE_FREE, ptr, 0, 0, pc, stack_here(rt, pc, 1), fn, kind);
        return -1;
    }
    uint32_t stack = stack_here(rt, 0, 1);
    if (o->kind != kind)
        report_error(rt, EMSAN_ERR_MISMATCH, ptr, 0, 0, pc, stack_here(rt, pc, 1), fn, kind);
    struct slab *s = slab_of(k, (uint64_t)handle);
    o->free_stack = stack;
    k->stats.frees++;
    k->stats.live_bytes -= o->size;
    uint64_t addr = guest_addr(rt, ptr);
    if (s->cls == LARGE_CLASS)
        k->ops->poison(k, s->first, s->slot, KASAN_PAGE_FREE);
    else
        k->ops->poison(k, addr, round_up(size_classes[s->cls], k->ops->granule), KASAN_SLAB_FREE);
    if (k->ops->save_track) k->ops->save_track(k, ptr, o->size, cache_size(s), stack, 1);
    int64_t size = (int64_t)o->size;
    if (k->ops->quarantine) {
        o->state = EMSAN_OBJ_QUARANTINED;
        quarantine_put(k, (uint64_t)handle, s->slot);
    } else {
        release_object(k, (uint64_t)handle);         /* tag modes: no quarantine, as in the kernel */
    }
    return size;
}

/* krealloc()'s kasan_check_byte() and ksize(): using a freed object through an allocator call
 * is a use after free. Returns 1 if reported. */
static int freed_use(kasan_t *k, uint64_t ptr, int64_t handle, int fn)
{
    if (handle < 0 || k->ops->accessible(k, obj_of(k, (uint64_t)handle), ptr)) return 0;
    rt_t *rt = k->rt;
    uint64_t pc = reg(rt, EMSAN_REG_PC);
    report_error(rt, EMSAN_ERR_ACCESS, ptr, 1, 0, pc, stack_here(rt, pc, 1), fn, 0);
    return 1;
}

static uint64_t do_realloc(kasan_t *k, uint64_t ptr, uint64_t size, int fn)
{
    if (!ptr) return do_alloc(k, size, 16, EMSAN_KIND_MALLOC);
    int64_t handle = object_at(k, ptr);
    if (freed_use(k, ptr, handle, fn)) return 0;     /* and no reallocation */
    uint64_t pc = reg(k->rt, EMSAN_REG_PC);
    if (handle < 0 || !size) {
        do_free(k, ptr, EMSAN_KIND_MALLOC, fn, pc);  /* reports the invalid free */
        return 0;
    }
    uint64_t old = obj_of(k, (uint64_t)handle)->size;
    uint64_t p = do_alloc(k, size, 16, EMSAN_KIND_MALLOC);
    if (!p) return 0;
    guest_copy(k->rt, p, ptr, old < size ? old : size);
    do_free(k, ptr, EMSAN_KIND_MALLOC, fn, pc);
    return p;
}

/* malloc_usable_size(): the requested size of a live object, 0 otherwise. */
static uint64_t usable_size(kasan_t *k, uint64_t ptr, int fn)
{
    if (!ptr) return 0;
    int64_t handle = find_object(k, guest_addr(k->rt, ptr));
    if (freed_use(k, ptr, handle, fn)) return 0;
    handle = object_at(k, ptr);
    return handle >= 0 ? obj_of(k, (uint64_t)handle)->size : 0;
}

/* An allocator entry point was called: do its work and return to its caller. */
void kasan_call(kasan_t *k, int fn)
{
    rt_t *rt = k->rt;
    struct alloc_call c;
    decode_alloc_call(rt, fn, &c);
    uint64_t r = 0;
    if (c.bad) {
        return_to_caller(rt, c.bad_ret);
        return;
    }
    switch (c.op) {
    case CALL_ALLOC:
        r = do_alloc(k, c.size, c.align, c.kind);
        if (r && c.zero) guest_zero(rt, r, c.size);
        if (c.out) {                            /* posix_memalign */
            if (r) mem_put(rt->uc, guest_addr(rt, c.out), &r, 8);
            r = r ? 0 : alloc_failed(&c);
        }
        break;
    case CALL_FREE:
        do_free(k, c.ptr, c.kind, fn, reg(rt, EMSAN_REG_PC));
        break;
    case CALL_REALLOC:
        r = do_realloc(k, c.ptr, c.size, fn);
        break;
    case CALL_USABLE_SIZE:
        r = usable_size(k, c.ptr, fn);
        break;
    case CALL_TAG_MEMORY:
        k->ops->tag_memory(k, c.ptr, c.tag, c.size);
        break;
    default:
        return;
    }
    return_to_caller(rt, r);
}
