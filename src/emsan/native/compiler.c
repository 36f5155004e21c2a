/* Compiler-assisted mode: the guest was built with clang -fsanitize=kernel-address and checks
 * its own accesses against the shadow emsan maps into it (src/emsan/runtime/kasan_runtime.h).
 * emsan stands in for two guest functions, each with one native hook at its first instruction:
 *   __emsan_kasan_report(addr, size, is_write, ip)  a failed check: re-checked against emsan's
 *                                                   own shadow, then queued as an access error;
 *   __asan_register_globals(globals, n)             poisons each global's redzone (0xF9) and
 *                                                   keeps the descriptors for reports;
 *   __asan_handle_no_return()                       clears the stack's shadow above the SP.
 * Everything else (stack and alloca redzones) the guest's code writes into the shadow itself.
 * The libc interceptors stay; memcpy, memmove, mempcpy and memset with good ranges are only
 * checked and then run the guest's own routine, as the kernel's memintrinsics (intercept.c). */
#include "kasan.h"

#define KASAN_GLOBAL_REDZONE 0xF9
#define KASAN_STACK_LEFT 0xF1
#define FRAME_MAGIC 0x41B58AB3ULL

/* LLVM's struct __asan_global (clang 6 and later): eight 64-bit fields. */
struct asan_global {
    uint64_t beg, size, size_with_redzone, name, module_name, has_dynamic_init, location, odr_indicator;
};

struct emsan_cc {
    kasan_t *k;
    struct asan_global *globals;
    size_t nglobals, cap;
    emsan_cc_stats stats;
};

EXPORT emsan_cc *emsan_cc_new(emsan_kasan *k)
{
    emsan_cc *cc = calloc(1, sizeof *cc);
    cc->k = k;
    k->guest_routines = 1;
    return cc;
}

EXPORT void emsan_cc_destroy(emsan_cc *cc)
{
    free(cc->globals);
    free(cc);
}

EXPORT void emsan_cc_get_stats(emsan_cc *cc, emsan_cc_stats *out)
{
    *out = cc->stats;
    out->guest_routines = cc->k->routines_run;
}

/* The call site of a call whose return address is `ret`. */
static uint64_t call_site(rt_t *rt, uint64_t ret)
{
    if (rt->arm64)
        return ret - 4;
    uint8_t b[6];
    if (mem_get(rt->uc, ret - 6, b, 6) == 0) {
        if (b[1] == 0xE8) return ret - 5;                    /* call rel32 */
        if (b[0] == 0xFF && b[1] == 0x15) return ret - 6;    /* call *disp32(%rip) (-fno-plt) */
    }
    return ret - 1;
}

/* The report's stack: the call stack at the hook, from the instrumented function on (the
 * runtime's own frames dropped), with the call site of the check as its first frame. */
static uint32_t access_stack(rt_t *rt, uint64_t entry, uint64_t ip, uint64_t site)
{
    uint32_t hd = stack_here(rt, entry, 1);
    uint64_t frames[EMSAN_STACK_DEPTH];
    int n = depot_get(rt, hd, frames, EMSAN_STACK_DEPTH);
    int i = 1;
    while (i < n && (frames[i] & ~EMSAN_CANDIDATE_FRAME) != ip) i++;
    if (i == n) {                        /* the unwinder lost the caller: keep what follows the hook */
        frames[0] = site;
        return depot_save(rt, frames, n > 0 ? n : 1);
    }
    frames[i] = site;
    return depot_save(rt, frames + i, n - i);
}

EXPORT void emsan_cc_report_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)size;
    emsan_cc *cc = ud;
    (void)uc;
    kasan_t *k = cc->k;
    rt_t *rt = k->rt;
    uint64_t addr = reg(rt, EMSAN_REG_ARG0);
    uint64_t n = reg(rt, EMSAN_REG_ARG0 + 1);
    int is_write = reg(rt, EMSAN_REG_ARG0 + 2) != 0;
    uint64_t ip = reg(rt, EMSAN_REG_ARG0 + 3);
    cc->stats.checks_failed++;
    /* The guest read its shadow through a mapping that may have been stale (a per-page shadow
     * chunk that changed pages while the guest's TLB held the old one); emsan's own copy
     * decides, and the re-check flushes the stale mapping. */
    if (n && addr + n >= addr && addr + n <= SHADOW_VA_LIMIT && !emsan_shadow_recheck(k, addr, n)) {
        cc->stats.rechecked_clean++;
        return_to_caller(rt, 0);
        return;
    }
    uint64_t site = call_site(rt, ip);
    uint32_t stack = access_stack(rt, address, ip, site);
    return_to_caller(rt, 0);
    cc->stats.reports++;
    report_error(rt, EMSAN_ERR_ACCESS, addr, n, is_write, site, stack, 0, 0);
}

EXPORT void emsan_cc_globals_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)address; (void)size;
    emsan_cc *cc = ud;
    kasan_t *k = cc->k;
    uint64_t arr = reg(k->rt, EMSAN_REG_ARG0);
    uint64_t n = reg(k->rt, EMSAN_REG_ARG0 + 1);
    for (uint64_t i = 0; i < n; i++) {
        struct asan_global g;
        if (mem_get(uc, arr + i * sizeof g, &g, sizeof g)) break;
        if ((g.beg & (GRANULE - 1)) || g.size > g.size_with_redzone || g.size_with_redzone > (1ULL << 40)) continue;
        /* the kernel's register_global() */
        uint64_t aligned = (g.size + GRANULE - 1) & ~(uint64_t)(GRANULE - 1);
        shadow_unpoison(k, g.beg, g.size, g.beg + (g.size_with_redzone > aligned ? g.size_with_redzone : aligned),
                        KASAN_GLOBAL_REDZONE);
        if (cc->nglobals == cc->cap) {
            cc->cap = cc->cap ? cc->cap * 2 : 256;
            cc->globals = realloc(cc->globals, cc->cap * sizeof *cc->globals);
        }
        cc->globals[cc->nglobals++] = g;
        cc->stats.globals++;
    }
    shadow_sync(k, 1);                   /* the guest sees the redzones from its next access */
    return_to_caller(k->rt, 0);
}

/* Before a call that does not return (longjmp, a C++ throw, abort): the frames it abandons keep
 * their redzones, and code that later reuses that stack without instrumentation (libc) could
 * hand instrumented code a pointer into them. As compiler-rt's __asan_handle_no_return, clear
 * the shadow of the stack from the stack pointer up (the main thread's stack; other threads'
 * stacks are left alone). */
EXPORT void emsan_cc_no_return_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)address; (void)size;
    emsan_cc *cc = ud;
    (void)uc;
    kasan_t *k = cc->k;
    rt_t *rt = k->rt;
    uint64_t sp = reg(rt, EMSAN_REG_SP) & ~(uint64_t)(GRANULE - 1);
    if (sp >= rt->stack_lo && sp < rt->stack_hi) {
        shadow_fill(k, sp, rt->stack_hi - sp, 0);
        shadow_sync(k, 1);
        cc->stats.no_returns++;
    }
    return_to_caller(rt, 0);
}

/* The registered global whose variable or redzone holds addr. */
EXPORT int emsan_cc_find_global(emsan_cc *cc, uint64_t addr, emsan_cc_global *out)
{
    for (size_t i = 0; i < cc->nglobals; i++) {
        struct asan_global *g = &cc->globals[i];
        if (addr >= g->beg && addr < g->beg + g->size_with_redzone) {
            out->beg = g->beg; out->size = g->size; out->size_with_redzone = g->size_with_redzone;
            out->name = g->name; out->module_name = g->module_name; out->location = g->location;
            return 1;
        }
    }
    return 0;
}

/* The kernel's get_address_stack_frame_info(): from addr walk the shadow down to
 * the frame's left redzone (0xF1); the frame starts there with {magic, descriptor, pc}.
 * Returns the frame's address, or 0 when [lo, addr) holds no frame. */
EXPORT uint64_t emsan_cc_find_frame(emsan_cc *cc, uint64_t addr, uint64_t lo)
{
    kasan_t *k = cc->k;
    uint64_t mem = addr & ~(uint64_t)(GRANULE - 1);
    while (mem >= lo && emsan_shadow_byte(k, mem) != KASAN_STACK_LEFT) mem -= GRANULE;
    while (mem >= lo && emsan_shadow_byte(k, mem) == KASAN_STACK_LEFT) mem -= GRANULE;
    if (mem < lo) return 0;
    uint64_t frame = mem + GRANULE, magic = 0;
    if (mem_get(k->rt->uc, frame, &magic, 8) || magic != FRAME_MAGIC) return 0;
    return frame;
}
