/* The runtime context: created once per engine (emsan's own, or a harness's), shared by every
 * detector on it. */
#include "runtime.h"

EXPORT emsan_runtime *emsan_runtime_new(void *uc, int is_arm64, const int *regs, const int *gprs, int ngprs)
{
    rt_t *rt = calloc(1, sizeof *rt);
    engine_regs_forget();
    rt->errs = calloc(ERR_RING, sizeof *rt->errs);
    rt->entries = calloc(MAX_ENTRIES, sizeof *rt->entries);
    rt->uc = uc;
    rt->arm64 = is_arm64;
    memcpy(rt->regs, regs, sizeof rt->regs);
    rt->ngprs = ngprs < EMSAN_MAX_GPRS ? ngprs : EMSAN_MAX_GPRS;
    memcpy(rt->gprs, gprs, (size_t)rt->ngprs * sizeof *gprs);
    return rt;
}

EXPORT void emsan_runtime_destroy(emsan_runtime *rt)
{
    scs_destroy(rt);
    cfi_destroy(rt);
    sobj_destroy(rt);
    for (size_t i = 0; i < rt->nentries; i++) free(rt->entries[i]);
    free(rt->entries);
    free(rt->depot.pool);
    free(rt->depot.table);
    free(rt->errs);
    free(rt);
}

EXPORT void emsan_runtime_set_fp_args(emsan_runtime *rt, const int *ids) { memcpy(rt->fpargs, ids, sizeof rt->fpargs); }

EXPORT void emsan_runtime_set_stack(emsan_runtime *rt, uint64_t lo, uint64_t hi)
{
    rt->stack_lo = lo;
    rt->stack_hi = hi;
}

/* ---- errors ------------------------------------------------------------------------------------ */

emsan_error *error_new(rt_t *rt, int type, uint64_t addr, uint64_t size, int is_write, uint64_t pc, uint32_t stack)
{
    static emsan_error dropped;          /* the queue is full: filled in, never reported */
    emsan_error *e = &dropped;
    rt->errors++;
    if (rt->err_count < ERR_RING) {
        e = &rt->errs[(rt->err_head + rt->err_count) % ERR_RING];
        rt->err_count++;
    }
    memset(e, 0, sizeof *e);
    e->type = type; e->addr = addr; e->size = size; e->is_write = is_write; e->pc = pc; e->stack = stack;
    e->kfence.index = -1;
    return e;
}

void error_raise(rt_t *rt)
{
    if (rt->on_error) rt->on_error();    /* Python reports now (multi-shot) */
    else emu_stop(rt->uc);               /* Python builds the report once the engine stops */
}

void report_error(rt_t *rt, int type, uint64_t addr, uint64_t size, int is_write, uint64_t pc, uint32_t stack,
                  int fn, int kind)
{
    emsan_error *e = error_new(rt, type, addr, size, is_write, pc, stack);
    e->fn = fn;
    e->kind = kind;
    error_raise(rt);
}

EXPORT void emsan_set_error_callback(emsan_runtime *rt, void (*cb)(void)) { rt->on_error = cb; }

EXPORT int emsan_errors_queued(emsan_runtime *rt) { return (int)rt->err_count; }

EXPORT int emsan_pop_error(emsan_runtime *rt, emsan_error *out)
{
    if (!rt->err_count) return 0;
    *out = rt->errs[rt->err_head];
    rt->err_head = (rt->err_head + 1) % ERR_RING;
    rt->err_count--;
    return 1;
}

/* ---- hooks' user data -------------------------------------------------------------------------- */

void *rt_entry(rt_t *rt, void *owner, int fn)
{
    for (size_t i = 0; i < rt->nentries; i++)
        if (rt->entries[i]->owner == owner && rt->entries[i]->fn == fn) return rt->entries[i];
    if (rt->nentries == MAX_ENTRIES) return NULL;
    struct entry *e = malloc(sizeof *e);
    e->owner = owner;
    e->fn = fn;
    e->op = call_op(fn);
    rt->entries[rt->nentries++] = e;
    return e;
}

/* ---- guest memory, on the guest's behalf ------------------------------------------------------- */

void guest_copy(rt_t *rt, uint64_t dst, uint64_t src, uint64_t n)
{
    uint8_t buf[4096];
    for (uint64_t done = 0; done < n;) {
        size_t chunk = n - done < sizeof buf ? (size_t)(n - done) : sizeof buf;
        mem_get(rt->uc, guest_addr(rt, src + done), buf, chunk);
        mem_put(rt->uc, guest_addr(rt, dst + done), buf, chunk);
        done += chunk;
    }
}

void guest_zero(rt_t *rt, uint64_t dst, uint64_t n)
{
    static const uint8_t zeros[4096];
    for (uint64_t done = 0; done < n;) {
        size_t chunk = n - done < sizeof zeros ? (size_t)(n - done) : sizeof zeros;
        mem_put(rt->uc, guest_addr(rt, dst + done), zeros, chunk);
        done += chunk;
    }
}
