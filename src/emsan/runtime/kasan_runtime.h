/* emsan's guest runtime for programs built with clang -fsanitize=kernel-address.
 *
 * `emsan cflags` passes this file to the compiler with -include, so every translation unit
 * carries these definitions (weak: the linker keeps one copy). They give the compiler's
 * instrumentation what it calls; under emsan (compiler-assisted mode) the shadow they read
 * and write is mapped into the guest at EMSAN_SHADOW_OFFSET, emsan's allocator poisons it, and
 * emsan stands in for __emsan_kasan_report(), __asan_register_globals() and __asan_handle_no_return()
 * (one native hook at each first instruction). Nothing here is instrumented itself.
 *
 * The shadow follows the kernel's generic KASAN: one byte per 8 bytes at (addr >> 3) + offset,
 * 0 = accessible, 1..7 = that many leading bytes accessible, negative = poisoned (the kernel's generic KASAN encoding). */
#ifndef EMSAN_KASAN_RUNTIME_H
#define EMSAN_KASAN_RUNTIME_H

#ifdef __cplusplus
extern "C" {
#endif

#define EMSAN_SHADOW_OFFSET 0x100000000000UL
#define EMSAN_ADDR_LIMIT (1UL << 44)           /* every guest address emsan lays out is below */
#define EMSAN_ALLOCA_REDZONE 32

#define EMSAN_RT __attribute__((weak, used, noinline, no_sanitize("kernel-address", "address")))
#define EMSAN_INLINE static inline __attribute__((always_inline, no_sanitize("kernel-address", "address")))
#define EMSAN_RET_IP ((unsigned long)__builtin_return_address(0))

/* The one report entry point: emsan hooks its first instruction, queues the report (after
 * re-checking its own copy of the shadow) and returns to the caller. Run without emsan it
 * does nothing. The asm keeps the arguments in their registers. */
EMSAN_RT void __emsan_kasan_report(unsigned long addr, unsigned long size, unsigned long is_write,
                                   unsigned long ip)
{
    __asm__ volatile("" : : "r"(addr), "r"(size), "r"(is_write), "r"(ip) : "memory");
}

EMSAN_INLINE signed char emsan_shadow(unsigned long addr)
{
    return *(volatile signed char *)((addr >> 3) + EMSAN_SHADOW_OFFSET);
}

/* The kernel's memory_is_poisoned_n(): is any byte of [addr, addr+size) poisoned? */
EMSAN_INLINE int emsan_poisoned(unsigned long addr, unsigned long size)
{
    if (size == 0)
        return 0;
    unsigned long last = addr + size - 1;
    if (last < addr || last >= EMSAN_ADDR_LIMIT)
        return 1;
    for (unsigned long g = addr & ~7UL; g < (last & ~7UL); g += 8)
        if (emsan_shadow(g))
            return 1;
    signed char s = emsan_shadow(last);
    return s != 0 && (signed char)(last & 7) >= s;
}

EMSAN_INLINE int emsan_poisoned_small(unsigned long addr, unsigned long size)
{
    unsigned long last = addr + size - 1;
    signed char s = emsan_shadow(last);
    if (__builtin_expect(s == 0 && (addr >> 3) == (last >> 3), 1))
        return 0;
    return emsan_poisoned(addr, size);
}

/* Outline instrumentation (-mllvm -asan-instrumentation-with-call-threshold=0). */
#define EMSAN_ACCESS(size)                                                                         \
    EMSAN_RT void __asan_load##size##_noabort(unsigned long addr)                                   \
    {                                                                                              \
        if (emsan_poisoned_small(addr, size))                                                      \
            __emsan_kasan_report(addr, size, 0, EMSAN_RET_IP);                                     \
    }                                                                                              \
    EMSAN_RT void __asan_store##size##_noabort(unsigned long addr)                                  \
    {                                                                                              \
        if (emsan_poisoned_small(addr, size))                                                      \
            __emsan_kasan_report(addr, size, 1, EMSAN_RET_IP);                                     \
    }                                                                                              \
    EMSAN_RT void __asan_load##size(unsigned long addr)                                             \
    {                                                                                              \
        if (emsan_poisoned_small(addr, size))                                                      \
            __emsan_kasan_report(addr, size, 0, EMSAN_RET_IP);                                     \
    }                                                                                              \
    EMSAN_RT void __asan_store##size(unsigned long addr)                                            \
    {                                                                                              \
        if (emsan_poisoned_small(addr, size))                                                      \
            __emsan_kasan_report(addr, size, 1, EMSAN_RET_IP);                                     \
    }
EMSAN_ACCESS(1)
EMSAN_ACCESS(2)
EMSAN_ACCESS(4)
EMSAN_ACCESS(8)
EMSAN_ACCESS(16)

#define EMSAN_ACCESS_N(name, is_write)                                                             \
    EMSAN_RT void name(unsigned long addr, unsigned long size)                                     \
    {                                                                                              \
        if (emsan_poisoned(addr, size))                                                            \
            __emsan_kasan_report(addr, size, is_write, EMSAN_RET_IP);                              \
    }
EMSAN_ACCESS_N(__asan_loadN_noabort, 0)
EMSAN_ACCESS_N(__asan_storeN_noabort, 1)
EMSAN_ACCESS_N(__asan_loadN, 0)
EMSAN_ACCESS_N(__asan_storeN, 1)

/* Inline instrumentation: the check failed in the caller. */
#define EMSAN_REPORT(size)                                                                         \
    EMSAN_RT void __asan_report_load##size##_noabort(unsigned long addr)                            \
    {                                                                                              \
        __emsan_kasan_report(addr, size, 0, EMSAN_RET_IP);                                         \
    }                                                                                              \
    EMSAN_RT void __asan_report_store##size##_noabort(unsigned long addr)                           \
    {                                                                                              \
        __emsan_kasan_report(addr, size, 1, EMSAN_RET_IP);                                         \
    }                                                                                              \
    EMSAN_RT void __asan_report_load##size(unsigned long addr)                                      \
    {                                                                                              \
        __emsan_kasan_report(addr, size, 0, EMSAN_RET_IP);                                         \
    }                                                                                              \
    EMSAN_RT void __asan_report_store##size(unsigned long addr)                                     \
    {                                                                                              \
        __emsan_kasan_report(addr, size, 1, EMSAN_RET_IP);                                         \
    }
EMSAN_REPORT(1)
EMSAN_REPORT(2)
EMSAN_REPORT(4)
EMSAN_REPORT(8)
EMSAN_REPORT(16)

EMSAN_RT void __asan_report_load_n_noabort(unsigned long addr, unsigned long size)
{
    __emsan_kasan_report(addr, size, 0, EMSAN_RET_IP);
}
EMSAN_RT void __asan_report_store_n_noabort(unsigned long addr, unsigned long size)
{
    __emsan_kasan_report(addr, size, 1, EMSAN_RET_IP);
}
EMSAN_RT void __asan_report_load_n(unsigned long addr, unsigned long size)
{
    __emsan_kasan_report(addr, size, 0, EMSAN_RET_IP);
}
EMSAN_RT void __asan_report_store_n(unsigned long addr, unsigned long size)
{
    __emsan_kasan_report(addr, size, 1, EMSAN_RET_IP);
}

/* Globals: emsan stands in for this one (it poisons each global's redzone with 0xF9 and keeps
 * the descriptors for reports); the body only runs without emsan. */
EMSAN_RT void __asan_register_globals(void *globals, unsigned long n)
{
    __asm__ volatile("" : : "r"(globals), "r"(n) : "memory");
}
EMSAN_RT void __asan_unregister_globals(void *globals, unsigned long n)
{
    (void)globals; (void)n;                      /* as the kernel: globals stay registered */
}

/* Shadow stores the compiler emits as calls (shadow addresses): f8 only with the opt-in
 * -mllvm -asan-use-after-scope=1, whose out-of-scope locals emsan reports as stack-use-after-scope. */
EMSAN_INLINE void emsan_shadow_set(unsigned long shadow, unsigned long n, unsigned char v)
{
    for (unsigned long i = 0; i < n; i++)
        ((volatile unsigned char *)shadow)[i] = v;
}
EMSAN_RT void __asan_set_shadow_00(unsigned long s, unsigned long n) { emsan_shadow_set(s, n, 0x00); }
EMSAN_RT void __asan_set_shadow_f1(unsigned long s, unsigned long n) { emsan_shadow_set(s, n, 0xF1); }
EMSAN_RT void __asan_set_shadow_f2(unsigned long s, unsigned long n) { emsan_shadow_set(s, n, 0xF2); }
EMSAN_RT void __asan_set_shadow_f3(unsigned long s, unsigned long n) { emsan_shadow_set(s, n, 0xF3); }
EMSAN_RT void __asan_set_shadow_f5(unsigned long s, unsigned long n) { emsan_shadow_set(s, n, 0xF5); }
EMSAN_RT void __asan_set_shadow_f8(unsigned long s, unsigned long n) { emsan_shadow_set(s, n, 0xF8); }

/* Memory ranges (addresses, not shadow). */
EMSAN_INLINE void emsan_poison(unsigned long addr, unsigned long size, unsigned char v)
{
    emsan_shadow_set((addr >> 3) + EMSAN_SHADOW_OFFSET, size >> 3, v);
}
EMSAN_INLINE void emsan_unpoison(unsigned long addr, unsigned long size)
{
    emsan_poison(addr, size & ~7UL, 0);
    if (size & 7)
        *(volatile unsigned char *)(((addr + (size & ~7UL)) >> 3) + EMSAN_SHADOW_OFFSET) = (unsigned char)(size & 7);
}

/* Dynamic allocas (VLAs, alloca()): as the kernel's generic KASAN, 32-byte redzones 0xCA left, 0xCB right. */
EMSAN_RT void __asan_alloca_poison(unsigned long addr, unsigned long size)
{
    unsigned long rounded_up = (size + 7) & ~7UL;
    unsigned long padding = ((size + EMSAN_ALLOCA_REDZONE - 1) & ~(unsigned long)(EMSAN_ALLOCA_REDZONE - 1)) - rounded_up;
    unsigned long rounded_down = size & ~7UL;
    emsan_unpoison(addr + rounded_down, size - rounded_down);
    emsan_poison(addr - EMSAN_ALLOCA_REDZONE, EMSAN_ALLOCA_REDZONE, 0xCA);
    emsan_poison(addr + rounded_up, padding + EMSAN_ALLOCA_REDZONE, 0xCB);
}
EMSAN_RT void __asan_allocas_unpoison(unsigned long top, unsigned long bottom)
{
    if (top && top <= bottom)
        emsan_poison(top, bottom - top, 0);
}

/* emsan stands in for this one: it clears the stack's shadow from the stack pointer up. */
EMSAN_RT void __asan_handle_no_return(void) { __asm__ volatile("" : : : "memory"); }

#ifdef __cplusplus
}
#endif
#endif
