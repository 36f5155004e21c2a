/* Stack collection (frame-pointer walk) and a deduplicating stack depot like the kernel's:
 * each trace is hashed, stored once in a pool and named by a 32-bit handle. */
#include <time.h>
#include "runtime.h"

static uint32_t hash_frames(const uint64_t *f, int n)
{
    uint64_t x = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    for (int i = 0; i < n; i++) {
        x ^= f[i] + 0x9E3779B97F4A7C15ULL + (x << 6) + (x >> 2);
        x *= 0xBF58476D1CE4E5B9ULL;
    }
    return (uint32_t)(x ^ (x >> 31)) | 1;
}

#define DEPOT_MAX_WORDS (1ULL << 27)      /* 1 GiB of frames: past it, the run ends (exhaust.c) */

static int depot_grow_table(struct depot *d)
{
    size_t nsize = d->tsize ? d->tsize * 2 : 4096;
    uint32_t *nt = calloc(nsize, sizeof *nt);
    if (!nt) return 0;
    for (size_t i = 0; i < d->tsize; i++) {
        uint32_t hd = d->table[i];
        if (!hd) continue;
        uint32_t hv = (uint32_t)(d->pool[hd - 1] >> 32);
        size_t j = hv & (nsize - 1);
        while (nt[j]) j = (j + 1) & (nsize - 1);
        nt[j] = hd;
    }
    free(d->table);
    d->table = nt;
    d->tsize = nsize;
    return 1;
}

uint32_t depot_save(rt_t *rt, const uint64_t *frames, int n)
{
    struct depot *d = &rt->depot;
    if (n <= 0 || emsan_out_of) return 0;
    if (!rt->no_depot && (d->count + 1) * 10 >= d->tsize * 7 && !depot_grow_table(d)) {
        out_of("host memory for the stack depot");
        emu_stop(rt->uc);
        return 0;
    }
    uint32_t hv = hash_frames(frames, n);
    size_t j = d->tsize ? hv & (d->tsize - 1) : 0;
    for (; !rt->no_depot; j = (j + 1) & (d->tsize - 1)) {
        uint32_t hd = d->table[j];
        if (!hd) break;
        uint64_t head = d->pool[hd - 1];
        if ((uint32_t)(head >> 32) == hv && (int)(uint32_t)head == n &&
            memcmp(&d->pool[hd], frames, (size_t)n * 8) == 0)
            return hd;
    }
    if (d->used + (size_t)n + 1 > DEPOT_MAX_WORDS) {          /* (handles are 32-bit, too) */
        out_of("stack depot space");
        emu_stop(rt->uc);
        return 0;
    }
    if (d->used + (size_t)n + 1 > d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 1 << 16;
        while (cap < d->used + (size_t)n + 1) cap *= 2;
        uint64_t *pool = realloc(d->pool, cap * 8);
        if (!pool) { out_of("host memory for the stack depot"); emu_stop(rt->uc); return 0; }
        d->pool = pool;
        d->cap = cap;
    }
    uint32_t hd = (uint32_t)d->used + 1;
    d->pool[d->used] = ((uint64_t)hv << 32) | (uint32_t)n;
    memcpy(&d->pool[d->used + 1], frames, (size_t)n * 8);
    d->used += (size_t)n + 1;
    if (!rt->no_depot) {                  /* --no-depot: every trace stored separately */
        d->table[j] = hd;
    }
    d->count++;
    return hd;
}

int depot_get(rt_t *rt, uint32_t handle, uint64_t *out, int max)
{
    struct depot *d = &rt->depot;
    if (!handle || handle > d->used) return 0;
    int n = (int)(uint32_t)d->pool[handle - 1];
    if (n > max) n = max;
    memcpy(out, &d->pool[handle], (size_t)n * 8);
    return n;
}

EXPORT int emsan_depot_get(emsan_runtime *rt, uint32_t handle, uint64_t *out, int max)
{
    return depot_get(rt, handle, out, max);
}

/* The frame-pointer walk: `pc` first (if non-zero); at a function's entry the return address
 * comes from [sp] (x86-64) or LR (arm64); then the frame-pointer chain while it is sane. */
int stack_fp(rt_t *rt, uint64_t pc, int at_entry, uint64_t *frames)
{
    int n = 0;
    void *uc = rt->uc;
    if (pc) frames[n++] = pc;
    /* At a function's entry the return address is certain; anywhere else it is only a
     * candidate (a leaf function may not have saved it yet), marked for Python to check. */
    uint64_t ret = 0;
    if (rt->arm64) ret = reg(rt, EMSAN_REG_LR) & RET_MASK;
    else mem_get(uc, reg(rt, EMSAN_REG_SP), &ret, 8);
    if (ret && at_entry) frames[n++] = ret;
    else if (ret && pc) frames[n++] = ret | EMSAN_CANDIDATE_FRAME;
    uint64_t fp = reg(rt, EMSAN_REG_FP);
    while (n < EMSAN_STACK_DEPTH) {
        uint64_t rec[2];
        if (fp < rt->stack_lo || fp + 16 > rt->stack_hi || (fp & 7) || mem_get(uc, fp, rec, 16))
            break;
        uint64_t ret = rec[1] & RET_MASK;
        if (!ret) break;
        frames[n++] = ret;
        if (rec[0] <= fp) break;
        fp = rec[0];
    }
    return n;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The current call stack with the collector chosen by emsan_set_stacks(), saved in the depot.
 * pc == 0: an allocation or a free at the allocator's entry; with --stacks none those keep no
 * stack. Reports (pc != 0) always get one: the fp walk when no collector runs. */
uint32_t stack_here(rt_t *rt, uint64_t pc, int at_entry)
{
    int mode = rt->stack_mode;
    if (mode == EMSAN_STACKS_NONE && !pc) return 0;
    uint64_t t0 = rt->timed ? now_ns() : 0;
    uint32_t hd;
    if (mode == EMSAN_STACKS_SCS) {
        hd = stack_scs_save(rt, pc, at_entry);
    } else {
        uint64_t frames[EMSAN_STACK_DEPTH];
        int n;
        switch (mode) {
        case EMSAN_STACKS_CFI: n = stack_cfi(rt, pc, at_entry, frames); break;
        case EMSAN_STACKS_X18: n = stack_x18(rt, pc, frames); break;
        default: n = stack_fp(rt, pc, at_entry, frames); break;
        }
        hd = depot_save(rt, frames, n);
    }
    rt->stack_saves++;
    if (rt->timed) rt->stack_ns += now_ns() - t0;
    return hd;
}

EXPORT void emsan_set_stacks(emsan_runtime *rt, int mode, int no_depot, int timed)
{
    rt->stack_mode = mode;
    rt->no_depot = no_depot;
    rt->timed = timed;
}

EXPORT void emsan_get_stack_stats(emsan_runtime *rt, emsan_stack_stats *out)
{
    memset(out, 0, sizeof *out);
    out->saves = rt->stack_saves;
    out->collector_ns = rt->stack_ns;
    out->unique = rt->depot.count;
    out->bytes = rt->depot.used * 8 + rt->depot.tsize * sizeof(uint32_t);
    scs_stats(rt, out);
}
