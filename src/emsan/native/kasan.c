/* What every KASAN mode shares around its allocator: creation, the hooks at the functions emsan
 * stands in for, range checks on the guest's behalf, and what a report asks about an address. */
#include <sys/mman.h>
#include "kasan.h"

static const struct kasan_ops *const modes[] = {
    [EMSAN_KASAN_GENERIC] = &kasan_generic_ops,
    [EMSAN_KASAN_SW_TAGS] = &kasan_sw_tags_ops,
    [EMSAN_KASAN_HW_TAGS] = &kasan_hw_tags_ops,
};

EXPORT emsan_kasan *emsan_kasan_new(emsan_runtime *rt, int mode, uint64_t base, uint64_t size,
                                    uint64_t quarantine_bytes, uint64_t seed)
{
    if (mode < 0 || mode > EMSAN_KASAN_HW_TAGS) return NULL;
    kasan_t *k = calloc(1, sizeof *k);
    k->rt = rt;
    k->ops = modes[mode];
    k->base = base;
    k->size = size;
    k->npages = size >> PAGE_SHIFT;
    k->bump = 1;                         /* page 0 stays a guard */
    k->q_limit = quarantine_bytes;
    k->report_alloc_errors = 1;
    k->budget = ~0ULL;
    /* The heap's memory is emsan's (mapped into the guest by the caller): the leak scanner
     * reads objects through it, and the MMIO view serves accesses from it. */
    k->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (k->host == MAP_FAILED) { free(k); return NULL; }
    if (!shadow_init(k, 1)) { munmap(k->host, size); free(k); return NULL; }
    k->page_slab = calloc(k->npages, sizeof *k->page_slab);
    if (k->ops->init && !k->ops->init(k, seed)) { emsan_kasan_destroy(k); return NULL; }
    return k;
}

/* Touches nothing of the runtime's, which may be gone already. */
EXPORT void emsan_kasan_destroy(emsan_kasan *k)
{
    if (k->ops->destroy) k->ops->destroy(k);
    leak_destroy(k);
    libc_destroy(k);
    checkpoint_destroy(k);
    mmio_destroy(k);
    inline_destroy(k);
    shadow_destroy(k);
    for (size_t i = 0; i < k->nslabs; i++) free(k->slabs[i].objs);
    for (int i = 0; i < NCLASSES; i++) free(k->freelist[i].v);
    free(k->free_runs.v); free(k->tolerant.v); free(k->slabs); free(k->page_slab); free(k->q);
    munmap(k->host, k->size);
    free(k);
}

EXPORT void *emsan_kasan_heap_memory(emsan_kasan *k) { return k->host; }

EXPORT void emsan_kasan_set_allocator_errors(emsan_kasan *k, int report) { k->report_alloc_errors = report; }

EXPORT void emsan_kasan_set_budget(emsan_kasan *k, uint64_t bytes) { k->budget = bytes; }

EXPORT void *emsan_kasan_entry(emsan_kasan *k, int fn)
{
    if (fn <= 0) return NULL;
    if (fn == EMSAN_FN_TAG_MEMORY && !k->ops->tag_memory) return NULL;
    return rt_entry(k->rt, k, fn);
}

/* Unicorn UC_HOOK_CODE callback on the first instruction of each function emsan stands in for. */
EXPORT void emsan_kasan_entry_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)address; (void)size;
    struct entry *e = ud;
    kasan_t *k = e->owner;
    uint64_t returns = k->rt->returns;
    if (e->op != CALL_NONE) {
        kasan_call(k, e->fn);
        shadow_sync(k, 0);               /* compiler-assisted mode: the guest sees the new shadow */
    } else if ((e->fn >= EMSAN_FN_MEMCPY_CHK && e->fn <= EMSAN_FN_STRNCAT_CHK) || e->fn >= EMSAN_FN_WMEMCPY_CHK) {
        intercept_fortify_fn(k, e->fn);
    } else if (e->fn >= EMSAN_FN_LIBC_FIRST) {
        intercept_libc_fn(k, e->fn);
    } else {
        intercept_string_fn(k, e->fn);
    }
    if (UNLIKELY(k->rt->returns == returns)) scs_own_code(k->rt);   /* a refusal: the guest's function runs */
}

EXPORT void *emsan_kasan_access_cb(emsan_kasan *k) { return (void *)k->ops->access_cb; }

/* A bad access the engine saw (mmio.c, inline.c), from the PCs it gave (the first one most
 * likely; none: the PC Unicorn last synced, a block of this function or before it). */
void access_error(kasan_t *k, uint64_t addr, unsigned size, int is_write, const uint64_t *cand, int ncand)
{
    rt_t *rt = k->rt;
    uint64_t pc = ncand ? cand[0] : reg(rt, EMSAN_REG_PC);
    /* Vector loads of optimized string code arrive as 4- or 8-byte pieces (read_ahead); tag
     * modes' pieces, tagged, go there whatever their size, as their memory hook's accesses do. */
    if (!is_write && (size >= 4 || k->tags) && read_ahead(k, pc, addr, size))
        return;
    if (call_quiet(k, addr, size, is_write)) return;        /* a libc call's own (libc.c) */
    emsan_error *e = error_new(rt, EMSAN_ERR_ACCESS, addr, size, is_write, pc, stack_here(rt, pc, 0));
    /* Registers are synced before every memory access: they locate the instruction. */
    e->site.ncand = ncand;
    memcpy(e->site.cand, cand, (size_t)ncand * sizeof *cand);
    e->site.nregs = rt->ngprs;
    for (int i = 0; i < rt->ngprs; i++) e->site.regs[i] = reg_get(rt->uc, rt->gprs[i]);
    error_raise(rt);
}

int check_range(kasan_t *k, uint64_t addr, uint64_t size, int is_write, int fn)
{
    return check_range_from(k, addr, size, is_write, fn, 0, 0);
}

int check_range_from(kasan_t *k, uint64_t addr, uint64_t size, int is_write, int fn, uint64_t pc, uint32_t stack)
{
    if (!size) return 0;
    rt_t *rt = k->rt;
    if (addr + size >= addr && !k->ops->range_bad(k, addr, size))   /* stack objects: at a call's entry only */
        return !pc && UNLIKELY(rt->sobj != NULL) && stack_objects_check(rt, addr, size, is_write, 0, fn, 1);
    if (!pc && call_quiet(k, addr, size, is_write)) return 0;    /* a libc call's own (libc.c) */
    /* bad, or a negative size: always a bug */
    if (!pc) {
        pc = reg(rt, EMSAN_REG_PC);
        stack = stack_here(rt, pc, 1);
    }
    report_error(rt, EMSAN_ERR_ACCESS, addr, size, is_write, pc, stack, fn, 0);
    return 1;
}

EXPORT int emsan_kasan_check_range(emsan_kasan *k, uint64_t addr, uint64_t size, int is_write, uint64_t pc)
{
    if (!size) return 0;
    if (addr + size >= addr && !k->ops->range_bad(k, addr, size))
        return UNLIKELY(k->rt->sobj != NULL) && stack_objects_check(k->rt, addr, size, is_write, pc, 0, 0);
    report_error(k->rt, EMSAN_ERR_ACCESS, addr, size, is_write, pc, stack_here(k->rt, pc, 0), 0, 0);
    return 1;
}

/* ---- read-ahead by string code emsan does not intercept --------------------------------------- */

int in_tolerant_range(kasan_t *k, uint64_t pc)
{
    for (size_t i = 0; i + 1 < k->tolerant.n; i += 2)
        if (pc >= k->tolerant.v[i] && pc < k->tolerant.v[i + 1]) return 1;
    return 0;
}

/* Optimized string routines finish a scan with the rest of their unrolled vector loop (4 x 16
 * bytes in glibc's SSE2 and ASIMD routines), past the NUL that ended the string and past its
 * object (README, "Read-ahead"). Such a load by string code (a piece of it, as the engine hands
 * vector loads over) is no bug when the READAHEAD bytes that end with it hold a NUL the pointer
 * may access (the mode's own check: shadow or tag): the terminator the function met. A string
 * read past its object for want of a terminator has none there and is reported. */
int read_ahead(kasan_t *k, uint64_t pc, uint64_t ptr, uint64_t size)
{
    if (size > READAHEAD || !in_tolerant_range(k, pc)) return 0;
    uint64_t tag = ptr & ~guest_addr(k->rt, ptr), end = guest_addr(k->rt, ptr) + size;
    uint64_t lo = end > READAHEAD ? end - READAHEAD : 0;
    uint8_t bytes[READAHEAD];
    if (mem_get(k->rt->uc, lo, bytes, end - lo)) {          /* the page before may be unmapped */
        uint64_t page = (end - size) & ~(PAGE_SIZE - 1);
        if (page <= lo || mem_get(k->rt->uc, page, bytes, end - page)) return 0;
        lo = page;
    }
    for (uint64_t a = lo; a < end; a++)
        if (bytes[a - lo] == 0 && !k->ops->range_bad(k, tag | a, 1)) return 1;
    return 0;
}

EXPORT void emsan_kasan_add_tolerant_range(emsan_kasan *k, uint64_t lo, uint64_t hi)
{
    vec_push(&k->tolerant, lo);
    vec_push(&k->tolerant, hi);
}

/* ---- reports -------------------------------------------------------------------------------- */

EXPORT int emsan_kasan_describe(emsan_kasan *k, uint64_t addr, uint64_t size, emsan_obj_info *out)
{
    memset(out, 0, sizeof *out);
    out->first_bad = addr;
    out->mem_tag = -1;
    int64_t handle = find_object(k, guest_addr(k->rt, addr));
    if (handle >= 0) {
        struct slab *s = slab_of(k, (uint64_t)handle);
        struct obj *o = obj_of(k, (uint64_t)handle);
        out->found = 1;
        out->state = o->state;
        out->kind = o->kind;
        out->large = s->cls == LARGE_CLASS;
        out->start = obj_addr(k, (uint64_t)handle);
        out->size = o->size;
        out->cache_size = cache_size(s);
        out->align = o->align_log ? 1ULL << o->align_log : 0;
        out->alloc_stack = o->alloc_stack;
        out->free_stack = o->free_stack;
        out->alloc_tid = o->alloc_tid;
        out->free_tid = o->free_tid;
    }
    if (k->ops->describe) k->ops->describe(k, addr, size, out);
    return out->found;
}

EXPORT void emsan_kasan_get_stats(emsan_kasan *k, emsan_kasan_stats *out)
{
    *out = k->stats;
    out->quarantine_bytes = k->q_bytes;
    out->quarantine_objects = k->q_len;
    out->heap_pages = k->bump;
    out->depot_traces = k->rt->depot.count;
    out->depot_bytes = k->rt->depot.used * 8;
    out->errors = k->rt->errors;
}
