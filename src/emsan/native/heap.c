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

static void set_live(kasan_t *k, struct obj *o, uint64_t size, int kind, int align_log, uint32_t stack)
{
    o->size = size; o->kind = (uint8_t)kind; o->state = EMSAN_OBJ_LIVE; o->alloc_stack = stack; o->free_stack = 0;
    o->alloc_tid = k->rt->tid; o->free_tid = 0;
    o->align_log = (uint8_t)align_log;
    leak_note_alloc(k, o);
}

/* Objects above 8 KiB and over-aligned ones: pages of their own between guard pages. */
static uint64_t alloc_large(kasan_t *k, uint64_t size, uint64_t align, int kind, int align_log, uint32_t stack)
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
    set_live(k, &s->objs[0], size, kind, align_log, stack);
    k->ops->poison(k, s->start, npages << PAGE_SHIFT, KASAN_SLAB_REDZONE);
    uint64_t end = round_up(s->first + size, PAGE_SIZE);
    if (end == s->first) end += PAGE_SIZE;
    uint64_t ptr = k->ops->unpoison(k, s->first, size, end, KASAN_PAGE_REDZONE);
    if (k->ops->save_track) k->ops->save_track(k, ptr, size, s->slot, stack, 0);
    return ptr;
}

/* A new object, or 0 when the heap is full or the guest's limits leave no room for it (credit:
 * bytes a realloc gives back). align_log: an aligned operator new's alignment, for its delete. */
static uint64_t do_alloc(kasan_t *k, uint64_t size, uint64_t align, int kind, int align_log, uint64_t credit)
{
    if (size > k->budget || k->stats.live_bytes - credit > k->budget - size) return 0;
    uint32_t stack = stack_here(k->rt, 0, 1);
    if (align < 16) align = 16;
    uint64_t ptr;
    if (size > MAX_SMALL || align > 16) {
        ptr = alloc_large(k, size, align, kind, align_log, stack);
    } else {
        int c = 0;
        while (size_classes[c] < size) c++;
        if (!k->freelist[c].n && !grow_class(k, c)) return 0;
        uint64_t handle = k->freelist[c].v[--k->freelist[c].n];
        touch(k, handle);
        struct slab *s = slab_of(k, handle);
        uint64_t addr = obj_addr(k, handle);
        set_live(k, obj_of(k, handle), size, kind, align_log, stack);
        ptr = k->ops->unpoison(k, addr, size, addr + s->slot, KASAN_SLAB_REDZONE);
        if (k->ops->save_track) k->ops->save_track(k, ptr, size, size_classes[s->cls], stack, 0);
    }
    if (ptr) {
        k->stats.allocs++;
        k->stats.live_bytes += size;
    }
    return ptr;
}

/* Every live object, slab by slab (a freed large object's slab keeps its one slot, not live). */
void for_each_live_object(kasan_t *k, void (*fn)(kasan_t *, uint64_t, struct obj *, void *), void *ctx)
{
    for (size_t id = 0; id < k->nslabs; id++) {
        struct slab *s = &k->slabs[id];
        for (uint32_t i = 0; i < s->nobj; i++)
            if (s->objs[i].state == EMSAN_OBJ_LIVE) fn(k, ((uint64_t)id << 24) | i, &s->objs[i], ctx);
    }
}

/* malloc() for the interceptors that allocate (strdup), at the intercepted function's entry. */
uint64_t heap_malloc(kasan_t *k, uint64_t size) { return do_alloc(k, size, 16, EMSAN_KIND_MALLOC, 0, 0); }

/* Back to reusable once it leaves the quarantine (its memory stays poisoned until reuse). */
void release_object(kasan_t *k, uint64_t handle)
{
    struct slab *s = slab_of(k, handle);
    struct obj *o = obj_of(k, handle);
    touch(k, handle);
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

/* A sized or aligned delete that does not match the object (C++14 and C++17 deallocation). */
static int delete_mismatch(const struct obj *o, const struct alloc_call *c)
{
    if (!c) return 0;
    uint64_t align = o->align_log ? 1ULL << o->align_log : 0;
    return (c->sized && c->size != o->size) || (c->aligned && c->align != align);
}

/* Validate and free; returns the freed object's requested size, or -1 when nothing was freed.
 * c: the deallocation call (its size and alignment are checked), NULL for realloc's free. */
static int64_t do_free(kasan_t *k, uint64_t ptr, int kind, int fn, uint64_t pc, const struct alloc_call *c)
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
    int mismatch = o->kind != kind ? EMSAN_ERR_MISMATCH : delete_mismatch(o, c) ? EMSAN_ERR_DELETE_MISMATCH : 0;
    if (mismatch) {
        emsan_error *e = error_new(rt, mismatch, ptr, c && c->sized ? c->size : 0, 0, pc, stack_here(rt, pc, 1));
        e->fn = fn;
        e->kind = kind;
        e->align = c && c->aligned ? c->align : 0;
        error_raise(rt);
        if (!rt->on_error) return -1;   /* the run stops here: the report shows the object as it is */
    }
    uint32_t stack = stack_here(rt, 0, 1);
    touch(k, (uint64_t)handle);
    struct slab *s = slab_of(k, (uint64_t)handle);
    o->free_stack = stack;
    o->free_tid = rt->tid;
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

/* realloc, reallocarray: the new object, or 0 (*oom set when the heap or the limits have no
 * room: the old object stays). */
static uint64_t do_realloc(kasan_t *k, uint64_t ptr, uint64_t size, int fn, int *oom)
{
    *oom = 0;
    if (!ptr) {
        uint64_t p = do_alloc(k, size, 16, EMSAN_KIND_MALLOC, 0, 0);
        *oom = !p;
        return p;
    }
    int64_t handle = object_at(k, ptr);
    if (freed_use(k, ptr, handle, fn)) return 0;     /* and no reallocation */
    uint64_t pc = reg(k->rt, EMSAN_REG_PC);
    if (handle < 0 || !size) {
        do_free(k, ptr, EMSAN_KIND_MALLOC, fn, pc, NULL);  /* reports the invalid free */
        return 0;
    }
    uint64_t old = obj_of(k, (uint64_t)handle)->size;
    uint64_t p = do_alloc(k, size, 16, EMSAN_KIND_MALLOC, 0, old);
    if (!p) {
        *oom = 1;
        return 0;
    }
    guest_copy(k->rt, p, ptr, old < size ? old : size);
    do_free(k, ptr, EMSAN_KIND_MALLOC, fn, pc, NULL);
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

/* ---- requests the allocator refuses --------------------------------------------------------- */

static uint64_t return_address(rt_t *rt, uint64_t sp)
{
    uint64_t ret = 0;
    if (rt->arm64) return reg(rt, EMSAN_REG_LR) & RET_MASK;
    mem_get(rt->uc, sp, &ret, 8);
    return ret;
}

/* Is this refused call made from inside the refused call before it (the guest's operator new
 * calling malloc, glibc's realloc calling malloc)? Then it is the same error, reported once.
 * Nested means: below that call's entry stack pointer, while that call's return address is
 * still where the call left it (x86-64: in the slot at its entry stack pointer; arm64: on the
 * current call stack, when there is one to look at). */
static int nested_refusal(kasan_t *k, uint64_t sp, uint32_t stack)
{
    rt_t *rt = k->rt;
    if (!k->refusal_sp || sp >= k->refusal_sp) return 0;
    if (!rt->arm64) return return_address(rt, k->refusal_sp) == k->refusal_ret;
    uint64_t frames[EMSAN_STACK_DEPTH];
    int n = depot_get(rt, stack, frames, EMSAN_STACK_DEPTH);
    if (n <= 2) return 1;
    for (int i = 1; i < n; i++)
        if ((frames[i] & ~EMSAN_CANDIDATE_FRAME & RET_MASK) == k->refusal_ret) return 1;
    return 0;
}

/* A request emsan's allocator refuses (ASan's allocation errors): reported, unless
 * --allocator-errors null or nested in a refusal already reported; then the guest's own
 * function runs, asked for something its C library refuses in the same way: the return value,
 * errno and, for operator new, the new-handler loop and std::bad_alloc are the library's.
 * Returns 0 when the C library accepts the request after all (glibc rounds a memalign
 * alignment up to a power of two), so emsan serves it. */
static int refuse(kasan_t *k, int fn, struct alloc_call *c, int error, uint64_t asked_align)
{
    rt_t *rt = k->rt;
    uint64_t pc = reg(rt, EMSAN_REG_PC), sp = reg(rt, EMSAN_REG_SP);
    uint32_t stack = stack_here(rt, pc, 1);
    if (!nested_refusal(k, sp, stack)) {
        k->refusal_sp = sp;
        k->refusal_ret = return_address(rt, sp);
        if (k->report_alloc_errors) {
            int factors = error == EMSAN_ALLOCERR_CALLOC_OVERFLOW || error == EMSAN_ALLOCERR_REALLOCARRAY_OVERFLOW;
            emsan_error *e = error_new(rt, EMSAN_ERR_ALLOC, 0, factors ? c->elem : c->size, 0, pc, stack);
            e->fn = fn;
            e->kind = error;
            e->count = factors ? c->count : 0;
            e->align = asked_align;
            if (error == EMSAN_ALLOCERR_OOM) {
                e->addr = k->stats.live_bytes;
                e->count = k->budget == ~0ULL ? 0 : k->budget;
            }
            error_raise(rt);
        }
    }
    if (error != EMSAN_ALLOCERR_OOM && !c->bad) return 0;
    refuse_in_guest(rt, fn, c);
    return 1;
}

/* The alignment the call asked for, before glibc's rounding (for the report). */
static uint64_t asked_alignment(rt_t *rt, int fn)
{
    switch (fn) {
    case EMSAN_FN_MEMALIGN: case EMSAN_FN_ALIGNED_ALLOC: case EMSAN_FN_MEMALIGN_OR_ALIGNED_ALLOC:
        return reg(rt, EMSAN_REG_ARG0);
    case EMSAN_FN_POSIX_MEMALIGN: case EMSAN_FN_NEW_ALIGNED: case EMSAN_FN_NEW_ARRAY_ALIGNED:
    case EMSAN_FN_NEW_ALIGNED_NOTHROW: case EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW:
        return reg(rt, EMSAN_REG_ARG0 + 1);
    default: return 0;
    }
}

static int is_aligned_new(int fn)
{
    return fn == EMSAN_FN_NEW_ALIGNED || fn == EMSAN_FN_NEW_ARRAY_ALIGNED || fn == EMSAN_FN_NEW_ALIGNED_NOTHROW ||
           fn == EMSAN_FN_NEW_ARRAY_ALIGNED_NOTHROW;
}

/* An allocator entry point was called: do its work and return to its caller (or, for a request
 * refused, let the guest's own function fail it). */
void kasan_call(kasan_t *k, int fn)
{
    rt_t *rt = k->rt;
    struct alloc_call c;
    decode_alloc_call(rt, fn, &c);
    uint64_t r = 0;
    if (UNLIKELY(k->refusal_sp) && reg(rt, EMSAN_REG_SP) >= k->refusal_sp)
        k->refusal_sp = 0;                      /* the refused call is over */
    if (UNLIKELY(c.error) && refuse(k, fn, &c, c.error, asked_alignment(rt, fn)))
        return;
    switch (c.op) {
    case CALL_ALLOC:
        r = do_alloc(k, c.size, c.align, c.kind, is_aligned_new(fn) ? __builtin_ctzll(c.align) : 0, 0);
        if (!r) {
            refuse(k, fn, &c, EMSAN_ALLOCERR_OOM, asked_alignment(rt, fn));
            return;
        }
        if (c.zero) guest_zero(rt, r, c.size);
        if (c.out) {                            /* posix_memalign */
            mem_put(rt->uc, guest_addr(rt, c.out), &r, 8);
            r = 0;
        }
        break;
    case CALL_FREE:
        do_free(k, c.ptr, c.kind, fn, reg(rt, EMSAN_REG_PC), &c);
        break;
    case CALL_REALLOC: {
        int oom;
        r = do_realloc(k, c.ptr, c.size, fn, &oom);
        if (oom) {
            refuse(k, fn, &c, EMSAN_ALLOCERR_OOM, 0);
            return;
        }
        break;
    }
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
