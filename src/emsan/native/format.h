/* Variable arguments and the printf and scanf formats that describe them (format.c). */
#ifndef EMSAN_FORMAT_H
#define EMSAN_FORMAT_H
#include "kasan.h"

#define MAX_ARGS 128
#define MAX_DIRECTIVES 256
#define FORMAT_MAX (1 << 20)

/* Where the next variable argument is: registers then the stack of a call at its entry, or a
 * va_list (x86-64: gr_offs/vr_offs are gp_offset/fp_offset, gr_top the reg_save_area). */
struct args {
    rt_t *rt;
    int va, bad;
    int gp, fp;                        /* direct: next integer and vector register */
    uint64_t stack;                    /* next stack slot (va_list: overflow area or __stack) */
    uint64_t gr_top, vr_top;
    int32_t gr_offs, vr_offs;
};
void args_direct(struct args *a, rt_t *rt, int fixed);
void args_va(struct args *a, rt_t *rt, uint64_t va);

/* Elements before the first 0 in [s, s + max elements), max if none; -1 if unreadable (read a
 * chunk at a time, never across a page it need not touch). */
int64_t guest_len(rt_t *rt, uint64_t s, uint64_t max, int elem);

/* What a printf touches besides its output: called for each string it reads and each %n;
 * a nonzero return (a report) ends the walk. */
struct visit {
    void *ctx;
    int (*read)(void *ctx, uint64_t addr, uint64_t len);
    int (*write)(void *ctx, uint64_t addr, uint64_t len);
};
/* Walk a printf format (its fmt_len bytes, the NUL excluded): visit what it reads and writes;
 * with measure, return the length of its output, -1 when it depends on what emsan does not know
 * (the locale, errno for %m, a conversion a program registered, arguments it cannot read). */
int64_t printf_walk(rt_t *rt, uint64_t fmt, int64_t fmt_len, struct args *a, const struct visit *v, int measure);

/* Where a scanf may store, in order: each conversion that assigns (struct dest, kasan.h), and %n.
 * Returns how many (at most max), -1 if the format or its arguments are not understood. */
int scanf_walk(rt_t *rt, uint64_t fmt, int64_t fmt_len, struct args *a, struct dest *out, int max);

#endif
