/* The C library functions that read or write the caller's memory in ways only their own code
 * knows in full: the number parsers (strtol, atoi, strtod), the printf and scanf families, the
 * stream functions (fputs, fwrite, fgets, fread) and _FORTIFY_SOURCE's checked reads. Their own
 * code runs (its results, errno and output stay the library's); at their entry emsan checks, as
 * one access at the caller each (check_range()), what the arguments say the call reads and
 * writes: the characters a number parser looks at, a format and its %s strings and %n, the
 * output a sprintf makes (the format parsed once, format.c), sscanf's input, fwrite's buffer, a
 * checked read's buffer whose check fails. What only the call's result says (fgets's line,
 * fread's items, scanf's conversions, an output emsan cannot measure) is checked when the call
 * returns (a hook at its return address), and only when the most it may store is not all good;
 * ASan's interceptors check after the real function too. While such a call runs, its own bad
 * accesses to those ranges (and to a range reported at its entry) are its: one report, at the
 * caller (libc_quiet()). */
#include "format.h"

#define NO_LIMIT (~0ULL >> 1)

static inline uint64_t arg(rt_t *rt, int i) { return reg_get(rt->uc, int_arg_reg(rt, i)); }

/* The checks of one call: after a report, no more (one report per call, as intercept.c). */
struct checks { kasan_t *k; int fn; int bad; };

static void quiet_reported(kasan_t *k, int fn, uint64_t lo, uint64_t len);

static int check(struct checks *c, uint64_t lo, uint64_t len, int is_write)
{
    if (!c->bad && (c->bad = check_range(c->k, lo, len, is_write, c->fn)))
        quiet_reported(c->k, c->fn, lo, len);  /* the library's own code touches it next */
    return c->bad;
}

static int visit_read(void *ctx, uint64_t a, uint64_t n) { return check(ctx, a, n, 0); }
static int visit_write(void *ctx, uint64_t a, uint64_t n) { return check(ctx, a, n, 1); }

static inline uint64_t times(uint64_t a, uint64_t b) { return a * b; }   /* wraps, as glibc's */

/* ---- numbers ----------------------------------------------------------------------------------- */

/* The guest's string, read a chunk at a time; -1 past what can be read. last: the furthest
 * character looked at. */
struct reader { rt_t *rt; uint64_t s, at; int have; int64_t last; uint8_t buf[256]; };

static int peek(struct reader *r, int64_t i)
{
    uint64_t a = r->s + (uint64_t)i;
    if (!r->have || a < r->at || a >= r->at + sizeof r->buf) {
        r->at = a & ~(uint64_t)(sizeof r->buf - 1);
        if (mem_get(r->rt->uc, guest_addr(r->rt, r->at), r->buf, sizeof r->buf)) { r->have = 0; return -1; }
        r->have = 1;
    }
    if (i > r->last) r->last = i;
    return r->buf[a - r->at];
}

static int is_space(int c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
static int digit_value(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : lower(c) >= 'a' && lower(c) <= 'z' ? lower(c) - 'a' + 10 : 99;
}

/* Skips the blanks and the sign; the index of what follows. */
static int64_t lead(struct reader *r)
{
    int64_t i = 0;
    while (is_space(peek(r, i))) i++;
    if (peek(r, i) == '+' || peek(r, i) == '-') i++;
    return i;
}

/* How many characters of word (lower case) match at i, case-insensitively. */
static int64_t matches(struct reader *r, int64_t i, const char *word)
{
    int64_t n = 0;
    while (word[n] && lower(peek(r, i + n)) == word[n]) n++;
    return n;
}

static int64_t digits(struct reader *r, int64_t i, int base)
{
    int c;
    while ((c = peek(r, i)) >= 0 && digit_value(c) < base) i++;
    return i;
}

/* Bytes strtol (base) reads at nptr, as glibc's parser in the C locale: the blanks, the sign,
 * a 0x prefix, the digits, and the character that ends them. 0 for an invalid base (glibc
 * reads nothing then); -1 if the string cannot be read. */
static int64_t integer_extent(struct reader *r, int base)
{
    if (base < 0 || base == 1 || base > 36) return 0;
    int64_t i = lead(r);
    if ((base == 0 || base == 16) && peek(r, i) == '0' && lower(peek(r, i + 1)) == 'x') {
        i += 2;
        base = 16;
    } else if (base == 0) {
        base = peek(r, i) == '0' ? 8 : 10;
    }
    digits(r, i, base);
    return r->have ? r->last + 1 : -1;
}

/* Bytes strtod reads: blanks, sign, then "inf[inity]", "nan[(chars)]", a hexadecimal or a
 * decimal number with its exponent, and the character that ends it. */
static int64_t float_extent(struct reader *r)
{
    int64_t i = lead(r);
    if (matches(r, i, "inf") == 3) {
        matches(r, i + 3, "inity");
    } else if (matches(r, i, "nan") == 3) {
        if (peek(r, i + 3) == '(') {
            int c;
            int64_t j = i + 4;
            while ((c = peek(r, j)) >= 0 && (digit_value(c) < 36 || c == '_')) j++;
        }
    } else {
        int hex = peek(r, i) == '0' && lower(peek(r, i + 1)) == 'x';
        int64_t start = hex ? i + 2 : i;
        int64_t j = digits(r, start, hex ? 16 : 10);
        if (peek(r, j) == '.') j = digits(r, j + 1, hex ? 16 : 10);
        if (j > start + (peek(r, start) == '.') && lower(peek(r, j)) == (hex ? 'p' : 'e')) {
            int64_t e = j + 1;
            if (peek(r, e) == '+' || peek(r, e) == '-') e++;
            digits(r, e, 10);
        }
    }
    return r->have ? r->last + 1 : -1;
}

/* strtol (nptr, endptr, base) and its kin, atoi (nptr), strtod (nptr, endptr), atof (nptr) */
static void do_number(kasan_t *k, int fn)
{
    rt_t *rt = k->rt;
    int is_float = fn >= EMSAN_FN_STRTOD, is_ato = fn == EMSAN_FN_ATOF || (fn >= EMSAN_FN_ATOI && fn <= EMSAN_FN_ATOLL);
    uint64_t nptr = arg(rt, 0), endptr = is_ato ? 0 : arg(rt, 1);
    struct reader r = {rt, nptr, 0, 0, 0, {0}};
    int64_t n = is_float ? float_extent(&r) : integer_extent(&r, is_ato ? 10 : (int)arg(rt, 2));
    if (n < 0) return;                            /* unreadable: the guest's code faults there */
    struct checks c = {k, fn, 0};
    check(&c, nptr, (uint64_t)n, 0);
    if (endptr) check(&c, endptr, 8, 1);
}

/* ---- printf ------------------------------------------------------------------------------------ */

enum { OUT_NONE, OUT_STRING, OUT_BOUNDED, OUT_ALLOC };
/* Argument positions (-1: none): the format, the va_list, the buffer, snprintf's size. */
struct pfn { int fn; int8_t fmt, va, dst, max; uint8_t out; };
static const struct pfn PRINTF[] = {
    {EMSAN_FN_PRINTF, 0, -1, -1, -1, OUT_NONE},
    {EMSAN_FN_FPRINTF, 1, -1, -1, -1, OUT_NONE},
    {EMSAN_FN_DPRINTF, 1, -1, -1, -1, OUT_NONE},
    {EMSAN_FN_SPRINTF, 1, -1, 0, -1, OUT_STRING},
    {EMSAN_FN_SNPRINTF, 2, -1, 0, 1, OUT_BOUNDED},
    {EMSAN_FN_ASPRINTF, 1, -1, 0, -1, OUT_ALLOC},
    {EMSAN_FN_VPRINTF, 0, 1, -1, -1, OUT_NONE},
    {EMSAN_FN_VFPRINTF, 1, 2, -1, -1, OUT_NONE},
    {EMSAN_FN_VDPRINTF, 1, 2, -1, -1, OUT_NONE},
    {EMSAN_FN_VSPRINTF, 1, 2, 0, -1, OUT_STRING},
    {EMSAN_FN_VSNPRINTF, 2, 3, 0, 1, OUT_BOUNDED},
    {EMSAN_FN_VASPRINTF, 1, 2, 0, -1, OUT_ALLOC},
    /* _FORTIFY_SOURCE's: a flag (and sprintf's object size) before the format */
    {EMSAN_FN_PRINTF_CHK, 1, -1, -1, -1, OUT_NONE},
    {EMSAN_FN_FPRINTF_CHK, 2, -1, -1, -1, OUT_NONE},
    {EMSAN_FN_DPRINTF_CHK, 2, -1, -1, -1, OUT_NONE},
    {EMSAN_FN_SPRINTF_CHK, 3, -1, 0, -1, OUT_STRING},
    {EMSAN_FN_SNPRINTF_CHK, 4, -1, 0, 1, OUT_BOUNDED},
    {EMSAN_FN_ASPRINTF_CHK, 2, -1, 0, -1, OUT_ALLOC},
    {EMSAN_FN_VPRINTF_CHK, 1, 2, -1, -1, OUT_NONE},
    {EMSAN_FN_VFPRINTF_CHK, 2, 3, -1, -1, OUT_NONE},
    {EMSAN_FN_VDPRINTF_CHK, 2, 3, -1, -1, OUT_NONE},
    {EMSAN_FN_VSPRINTF_CHK, 3, 4, 0, -1, OUT_STRING},
    {EMSAN_FN_VSNPRINTF_CHK, 4, 5, 0, 1, OUT_BOUNDED},
    {EMSAN_FN_VASPRINTF_CHK, 2, 3, 0, -1, OUT_ALLOC},
};

static void judge_at_return(kasan_t *k, int fn, const struct dest *d, int nd, uint64_t size);

/* The format and what its directives read (%s) and write (%n); the output a sprintf makes
 * into its buffer, as long as the format says it is (the guest's printf then makes exactly
 * that; a _FORTIFY_SOURCE variant whose object size it exceeds aborts natively, after the
 * report). An output emsan cannot measure (locale-dependent, %m) is left unchecked. */
static void do_printf(kasan_t *k, const struct pfn *p)
{
    rt_t *rt = k->rt;
    uint64_t fmt = arg(rt, p->fmt);
    int64_t flen = guest_len(rt, fmt, NO_LIMIT, 1);
    if (flen < 0) return;
    struct checks c = {k, p->fn, 0};
    if (check(&c, fmt, (uint64_t)flen + 1, 0)) return;
    struct args a;
    if (p->va >= 0) args_va(&a, rt, arg(rt, p->va));
    else args_direct(&a, rt, p->fmt + 1);
    const struct visit v = {&c, visit_read, visit_write};
    int64_t len = printf_walk(rt, fmt, flen, &a, &v, p->out == OUT_STRING || p->out == OUT_BOUNDED);
    uint64_t dst = p->dst >= 0 ? arg(rt, p->dst) : 0;
    if (p->out == OUT_STRING && len >= 0) {
        check(&c, dst, (uint64_t)len + 1, 1);
    } else if (p->out == OUT_BOUNDED && len >= 0) {
        uint64_t max = arg(rt, p->max);
        if (max) check(&c, dst, ((uint64_t)len < max - 1 ? (uint64_t)len : max - 1) + 1, 1);
    } else if (p->out == OUT_ALLOC) {
        check(&c, dst, 8, 1);                   /* where the new string's pointer goes */
    } else if (p->out != OUT_NONE && !c.bad) {
        /* an output emsan cannot measure (the locale's, %m): judged by its result at the return
         * (or at glibc's failed check inside a _FORTIFY_SOURCE variant, __sprintf_chk) */
        uint64_t max = p->out == OUT_BOUNDED ? arg(rt, p->max) : ~0ULL - dst;
        struct dest d = {dst, max, DEST_FIXED, 1};
        if (max && (max == ~0ULL - dst || dst + max < dst || k->ops->range_bad(k, dst, max)))
            judge_at_return(k, p->fn, &d, 1, p->fn == EMSAN_FN_SPRINTF_CHK || p->fn == EMSAN_FN_VSPRINTF_CHK ? arg(rt, 2) : 0);
    }
}

/* ---- scanf: the format and sscanf's input (what the conversions store: the guest's own) -------- */

struct sfn { int fn; int8_t fmt, str, va; };
static const struct sfn SCANF[] = {
    {EMSAN_FN_SCANF, 0, -1, -1}, {EMSAN_FN_FSCANF, 1, -1, -1}, {EMSAN_FN_SSCANF, 1, 0, -1},
    {EMSAN_FN_VSCANF, 0, -1, 1}, {EMSAN_FN_VFSCANF, 1, -1, 2}, {EMSAN_FN_VSSCANF, 1, 0, 2},
};

/* The format and sscanf's input at entry; where the conversions may store, judged when the
 * call returns (its result says which stored) unless every place is good for the most it may
 * store. */
static void do_scanf(kasan_t *k, const struct sfn *s)
{
    rt_t *rt = k->rt;
    struct checks c = {k, s->fn, 0};
    uint64_t fmt = arg(rt, s->fmt);
    int64_t flen = guest_len(rt, fmt, NO_LIMIT, 1);
    if (flen < 0 || check(&c, fmt, (uint64_t)flen + 1, 0)) return;
    if (s->str >= 0) {
        uint64_t str = arg(rt, s->str);
        int64_t slen = guest_len(rt, str, NO_LIMIT, 1);
        if (slen >= 0 && check(&c, str, (uint64_t)slen + 1, 0)) return;
    }
    struct args a;
    if (s->va >= 0) args_va(&a, rt, arg(rt, s->va));
    else args_direct(&a, rt, s->fmt + 1);
    struct dest d[MAX_DESTS];
    int nd = scanf_walk(rt, fmt, flen, &a, d, MAX_DESTS);
    for (int i = 0; i < nd; i++) {
        uint64_t lo = d[i].ptr, max = d[i].max;
        if (max == ~0ULL || lo + max < lo || k->ops->range_bad(k, lo, max)) {
            judge_at_return(k, s->fn, d, nd, 0);
            return;
        }
    }
}

static void do_read_stream(kasan_t *k, int fn);

/* ---- streams and reads --------------------------------------------------------------------------- */

static void do_stream(kasan_t *k, int fn)
{
    rt_t *rt = k->rt;
    struct checks c = {k, fn, 0};
    uint64_t p = arg(rt, fn == EMSAN_FN_READ_CHK || fn == EMSAN_FN_PREAD_CHK ? 1 : 0);
    switch (fn) {
    case EMSAN_FN_FWRITE:                       /* (ptr, size, n, fp) */
        check(&c, p, times(arg(rt, 1), arg(rt, 2)), 0);
        break;
    case EMSAN_FN_FPUTS: case EMSAN_FN_PUTS: {
        int64_t n = guest_len(rt, p, NO_LIMIT, 1);
        if (n >= 0) check(&c, p, (uint64_t)n + 1, 0);
        break;
    }
    case EMSAN_FN_READ_CHK: case EMSAN_FN_PREAD_CHK: {
        /* (fd, buf, nbytes, buflen) and (fd, buf, nbytes, offset, buflen): glibc aborts before
         * reading when nbytes exceeds the object; else the read itself checks what it stores */
        uint64_t n = arg(rt, 2), buflen = arg(rt, fn == EMSAN_FN_READ_CHK ? 3 : 4);
        if (n > buflen) check(&c, p, n, 1);
        break;
    }
    case EMSAN_FN_FREAD_CHK: {
        /* (ptr, ptrlen, size, n, fp): glibc aborts before reading when size * n exceeds ptrlen */
        uint64_t size = arg(rt, 2), n = arg(rt, 3);
        unsigned __int128 total = (unsigned __int128)size * n;
        if (total > arg(rt, 1)) check(&c, p, total >> 64 ? ~0ULL : (uint64_t)total, 1);
        else do_read_stream(k, fn);
        break;
    }
    default:
        break;
    }
}

/* ---- calls judged at their return: fgets, fread, scanf -------------------------------------------- */

/* Is the call still running at stack pointer sp: its frames are at or below its entry's sp
 * (x86-64: the return pops the slot there). Its return (return_cb) ends it; this tells the calls
 * longjmp left. */
static inline int running(const struct pending *p, uint64_t sp) { return sp <= p->sp; }

int libc_quiet(kasan_t *k, uint64_t addr, uint64_t size, int is_write)
{
    rt_t *rt = k->rt;
    struct libc_calls *c = k->calls;
    uint64_t sp = reg(rt, EMSAN_REG_SP), a = guest_addr(rt, addr);
    for (int i = 0; i < c->npend; i++) {
        const struct pending *p = &c->pend[i];

        if ((!is_write && !p->reported) || !running(p, sp)) continue;
        for (int j = 0; j < p->ndests; j++) {
            uint64_t lo = guest_addr(rt, p->d[j].ptr), max = p->d[j].max;
            if (p->reported) {
                /* the call's own vector loads around the range it was reported for (they reach
                 * READAHEAD bytes past it, and come in the engine's pieces) */
                lo = lo > READAHEAD ? lo - READAHEAD : 0;
                max = max > ~0ULL - 2 * READAHEAD ? ~0ULL : max + 2 * READAHEAD;
            }
            if (a < lo ? lo - a < size : a - lo < max) return 1;     /* overlapping it */
        }
    }
    return 0;
}

/* One range the call stored, checked at the caller with the stack of its entry. */
static int judged(kasan_t *k, const struct pending *p, uint64_t lo, uint64_t len)
{
    return check_range_from(k, lo, len, 1, p->fn, p->entry, p->stack);
}

/* A string stored at d: its elements and the NUL, at most d->max bytes. */
static uint64_t stored_string(rt_t *rt, const struct dest *d)
{
    uint64_t most = d->max == ~0ULL ? NO_LIMIT : d->max / d->elem;
    int64_t n = guest_len(rt, d->ptr, most, d->elem);
    if (n < 0) return 0;
    return ((uint64_t)n < most ? (uint64_t)n + 1 : most) * d->elem;
}

/* What each conversion the result counts stored (and each %n reached). */
static void scanf_returned(kasan_t *k, const struct pending *p)
{
    int assigned = (int)(int32_t)reg(k->rt, EMSAN_REG_RET), seen = 0, total = 0;
    for (int i = 0; i < p->ndests; i++) total += p->d[i].kind != DEST_COUNT;
    for (int i = 0; i < p->ndests && assigned > 0; i++) {
        const struct dest *d = &p->d[i];
        if (d->kind == DEST_COUNT) {
            if ((seen < assigned || assigned == total) && judged(k, p, d->ptr, d->max)) return;
            continue;
        }
        if (seen++ >= assigned) break;
        if (judged(k, p, d->ptr, d->kind == DEST_STRING ? stored_string(k->rt, d) : d->max)) return;
    }
}

/* What the call stored, now that its result (or glibc's failed check) says. */
static void judge(kasan_t *k, const struct pending *p, int chk_failed)
{
    rt_t *rt = k->rt;
    uint64_t r = reg(rt, EMSAN_REG_RET);
    const struct dest *d = &p->d[0];
    switch (p->fn) {
    case EMSAN_FN_FREAD: case EMSAN_FN_FREAD_CHK:
        judged(k, p, d->ptr, r * p->size);     /* the items read */
        break;
    case EMSAN_FN_FGETS: case EMSAN_FN_FGETS_CHK: case EMSAN_FN_FGETS_UNLOCKED_CHK:
        if (chk_failed) judged(k, p, d->ptr, p->size + 1);  /* the line filled the object: the
                                                             * plain fgets would store its NUL past it */
        else if (r) judged(k, p, d->ptr, stored_string(rt, d));   /* the line and its NUL */
        break;
    case EMSAN_FN_SPRINTF: case EMSAN_FN_VSPRINTF: case EMSAN_FN_SNPRINTF: case EMSAN_FN_VSNPRINTF:
    case EMSAN_FN_SPRINTF_CHK: case EMSAN_FN_VSPRINTF_CHK: case EMSAN_FN_SNPRINTF_CHK: case EMSAN_FN_VSNPRINTF_CHK:
        if (chk_failed) judged(k, p, d->ptr, p->size + 1);     /* the output passed the object size */
        else if ((int32_t)r >= 0)                               /* the output and its NUL (at most max) */
            judged(k, p, d->ptr, (uint64_t)(int32_t)r + 1 < d->max ? (uint64_t)(int32_t)r + 1 : d->max);
        break;
    default:
        if (!chk_failed) scanf_returned(k, p);
        break;
    }
}

/* The hook at a judged call's return address. */
static void return_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)uc; (void)size;
    kasan_t *k = ud;
    rt_t *rt = k->rt;
    struct libc_calls *c = k->calls;
    uint64_t sp = reg(rt, EMSAN_REG_SP);
    for (int i = c->npend; i-- > 0;) {
        if (c->pend[i].ret != address || sp != (rt->arm64 ? c->pend[i].sp : c->pend[i].sp + 8)) continue;
        struct pending p = c->pend[i];
        c->npend = i;                           /* it, and any left by longjmp inside it */
        if (!p.reported) judge(k, &p, 0);
        return;
    }
}

/* The calls running at sp (at a call's entry), with room for one more; NULL if none is left. */
static struct libc_calls *calls_now(kasan_t *k, uint64_t sp)
{
    if (!k->calls && !(k->calls = calloc(1, sizeof *k->calls))) return NULL;
    struct libc_calls *c = k->calls;
    while (c->npend && !running(&c->pend[c->npend - 1], sp)) c->npend--;   /* returned, or gone */
    return c->npend < MAX_PENDING ? c : NULL;
}

/* A range reported at the call's entry: the library's own accesses to it while the call runs
 * are the same bug (with --continue, one report). */
static void track(kasan_t *k, int fn, const struct dest *d, int nd, uint64_t size, int reported);

static void quiet_reported(kasan_t *k, int fn, uint64_t lo, uint64_t len)
{
    struct dest d = {lo, lo + len < lo ? ~0ULL - lo : len, DEST_FIXED, 1};
    if (len) track(k, fn, &d, 1, 0, 1);
}

/* Judge this call at its return: its destinations may go past their objects. */
static void judge_at_return(kasan_t *k, int fn, const struct dest *d, int nd, uint64_t size)
{
    track(k, fn, d, nd, size, 0);
}

/* Follow this call until it returns (a hook at its return address, once per call site). */
static void track(kasan_t *k, int fn, const struct dest *d, int nd, uint64_t size, int reported)
{
    rt_t *rt = k->rt;
    uint64_t sp = reg(rt, EMSAN_REG_SP), ret = 0, pc = reg(rt, EMSAN_REG_PC);
    if (rt->arm64) ret = reg(rt, EMSAN_REG_LR) & RET_MASK;
    else if (mem_get(rt->uc, sp, &ret, 8)) return;
    struct libc_calls *c = calls_now(k, sp);
    if (!c || nd > MAX_DESTS) return;
    size_t i = 0;
    while (i < c->ret_hooks.n && c->ret_hooks.v[i] != ret) i++;
    if (i == c->ret_hooks.n) {
        size_t hh;
        if (emsan_hook_add(rt->uc, &hh, 4 /* UC_HOOK_CODE */, (void *)return_cb, k, ret, ret)) return;
        /* code translated before has no call to the new hook */
        ((engine_ctl_fn)emsan_uc.uc_ctl)(rt->uc, ENGINE_CTL_TB_REMOVE_CACHE, ret, ret + 1);
        vec_push(&c->ret_hooks, ret);
    }
    struct pending *p = &c->pend[c->npend++];
    *p = (struct pending){fn, pc, sp, ret, size, reported ? 0 : stack_here(rt, pc, 1), reported, nd, {{0}}};
    memcpy(p->d, d, (size_t)nd * sizeof *d);
}

/* fgets (s, n, fp), __fgets_chk (s, size, n, fp), fread (ptr, size, n, fp), __fread_chk
 * (ptr, ptrlen, size, n, fp) once its own check passed: only when the most they may store
 * is not all good are they judged at their return. */
static void do_read_stream(kasan_t *k, int fn)
{
    rt_t *rt = k->rt;
    struct dest d = {arg(rt, 0), 0, DEST_STRING, 1};
    uint64_t size;
    if (fn == EMSAN_FN_FREAD || fn == EMSAN_FN_FREAD_CHK) {
        int chk = fn == EMSAN_FN_FREAD_CHK;
        size = arg(rt, chk ? 2 : 1);
        unsigned __int128 total = (unsigned __int128)size * arg(rt, chk ? 3 : 2);
        if (total >> 64) return;
        d.max = (uint64_t)total;
        d.kind = DEST_FIXED;
    } else {
        int chk = fn != EMSAN_FN_FGETS;
        int64_t n = (int32_t)arg(rt, chk ? 2 : 1);
        if (n <= 0) return;
        d.max = (uint64_t)n;
        size = chk ? arg(rt, 1) : 0;            /* the object size glibc checks */
        if (chk && size < d.max) d.max = size + 1;  /* it stops there, and fails */
    }
    if (!d.max || (d.ptr + d.max >= d.ptr && !k->ops->range_bad(k, d.ptr, d.max))) return;
    judge_at_return(k, fn, &d, 1, size);
}

/* glibc's _FORTIFY_SOURCE check failed inside a call judged at its return (__fgets_chk): the
 * call is judged now, before glibc's abort. */
static void chk_failed(kasan_t *k)
{
    struct libc_calls *c = k->calls;
    if (!c) return;
    uint64_t sp = reg(k->rt, EMSAN_REG_SP);
    while (c->npend) {
        struct pending p = c->pend[--c->npend];
        if (!p.reported && running(&p, sp)) { judge(k, &p, 1); return; }
    }
}

void libc_destroy(kasan_t *k)
{
    if (k->calls) free(k->calls->ret_hooks.v);
    free(k->calls);
}

void intercept_libc_fn(kasan_t *k, int fn)
{
    if (fn <= EMSAN_FN_ATOF) {
        do_number(k, fn);
    } else if (fn >= EMSAN_FN_PRINTF && fn <= EMSAN_FN_VASPRINTF_CHK) {
        for (size_t i = 0; i < sizeof PRINTF / sizeof PRINTF[0]; i++)
            if (PRINTF[i].fn == fn) { do_printf(k, &PRINTF[i]); break; }
    } else if (fn >= EMSAN_FN_SCANF && fn <= EMSAN_FN_VSSCANF) {
        do_scanf(k, &SCANF[fn - EMSAN_FN_SCANF]);
    } else if (fn == EMSAN_FN_FGETS || fn == EMSAN_FN_FGETS_CHK || fn == EMSAN_FN_FGETS_UNLOCKED_CHK ||
               fn == EMSAN_FN_FREAD) {
        do_read_stream(k, fn);
    } else if (fn == EMSAN_FN_CHK_FAIL) {
        chk_failed(k);
    } else {
        do_stream(k, fn);
    }
}
