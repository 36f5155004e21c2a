/* _FORTIFY_SOURCE's checked string functions (__memcpy_chk, __strcpy_chk..., and the wide
 * __wmemcpy_chk, __wcscpy_chk..., counts in wchar_t), which Debian's
 * programs call where the compiler knows the destination's size: glibc compares the length with
 * that size and, when it does not fit, aborts ("buffer overflow detected") before touching
 * memory. emsan reports such an overflow as it reports one through the plain function (the
 * kernel's checked memintrinsics report, they do not just fail), then lets glibc's own check
 * fail as it would natively. A call whose check passes is the plain function. */
#include "format.h"

#define UNBOUNDED (~0ULL >> 1)

static inline uint64_t arg(rt_t *rt, int i) { return reg(rt, EMSAN_REG_ARG0 + i); }

static int wide(int fn) { return fn >= EMSAN_FN_WMEMCPY_CHK; }

/* The plain function each variant checks before it runs, by its narrow twin's role (what the
 * switches below test) and by its own id (what runs when the check passes). */
static int plain_of(int fn)
{
    static const int plain[] = {EMSAN_FN_MEMCPY, EMSAN_FN_MEMMOVE, EMSAN_FN_MEMPCPY, EMSAN_FN_MEMSET,
                                EMSAN_FN_STRCPY, EMSAN_FN_STPCPY, EMSAN_FN_STRNCPY, EMSAN_FN_STPNCPY,
                                EMSAN_FN_STRCAT, EMSAN_FN_STRNCAT};
    return plain[wide(fn) ? fn - EMSAN_FN_WMEMCPY_CHK : fn - EMSAN_FN_MEMCPY_CHK];
}
static int own_plain(int fn)
{
    static const int wplain[] = {EMSAN_FN_WMEMCPY, EMSAN_FN_WMEMMOVE, EMSAN_FN_WMEMPCPY, EMSAN_FN_WMEMSET,
                                 EMSAN_FN_WCSCPY, EMSAN_FN_WCPCPY, EMSAN_FN_WCSNCPY, EMSAN_FN_WCPNCPY,
                                 EMSAN_FN_WCSCAT, EMSAN_FN_WCSNCAT};
    return wide(fn) ? wplain[fn - EMSAN_FN_WMEMCPY_CHK] : plain_of(fn);
}

/* The ranges the plain function reads and writes, checked (reported at the caller) in the
 * order intercept.c checks them; nothing is written (unreadable strings: glibc faults). */
static void check_overflow(kasan_t *k, int fn, uint64_t d, uint64_t s, uint64_t n)
{
    rt_t *rt = k->rt;
    int64_t dl, sl;                            /* lengths: -1 when unreadable (glibc then faults) */
    int e = wide(fn) ? 4 : 1;                  /* counts are in elements; ranges in bytes */
    uint64_t ne = n > UNBOUNDED / 4 ? ~0ULL : n * (uint64_t)e;
    switch (plain_of(fn)) {
    case EMSAN_FN_MEMSET:
        check_range(k, d, ne, 1, fn);
        break;
    case EMSAN_FN_MEMCPY: case EMSAN_FN_MEMMOVE: case EMSAN_FN_MEMPCPY:
        if (!check_range(k, s, ne, 0, fn)) check_range(k, d, ne, 1, fn);
        break;
    case EMSAN_FN_STRCPY: case EMSAN_FN_STPCPY:
        if ((sl = guest_len(rt, s, UNBOUNDED / 4, e)) < 0) break;
        if (!check_range(k, s, ((uint64_t)sl + 1) * e, 0, fn)) check_range(k, d, ((uint64_t)sl + 1) * e, 1, fn);
        break;
    case EMSAN_FN_STRNCPY: case EMSAN_FN_STPNCPY:               /* pads with NULs to n */
        if ((sl = guest_len(rt, s, n, e)) < 0) break;
        if (!check_range(k, s, ((uint64_t)sl < n ? (uint64_t)sl + 1 : n) * e, 0, fn)) check_range(k, d, ne, 1, fn);
        break;
    default: {                                                  /* strcat, strncat */
        int bounded = plain_of(fn) == EMSAN_FN_STRNCAT;
        if ((dl = guest_len(rt, d, UNBOUNDED / 4, e)) < 0 || (sl = guest_len(rt, s, bounded ? n : UNBOUNDED / 4, e)) < 0) break;
        if (!check_range(k, d, ((uint64_t)dl + 1) * e, 0, fn) &&
            !check_range(k, s, (bounded && (uint64_t)sl >= n ? n : (uint64_t)sl + 1) * e, 0, fn))
            check_range(k, d + (uint64_t)dl * e, ((uint64_t)sl + 1) * e, 1, fn);
        break;
    }
    }
}

/* glibc's checks, in elements for the wide variants: (d, s, destlen) for strcpy/stpcpy/strcat,
 * (d, s|c, n, destlen) for the others. */
void intercept_fortify_fn(kasan_t *k, int fn)
{
    rt_t *rt = k->rt;
    uint64_t d = arg(rt, 0), s = arg(rt, 1), n = arg(rt, 2), destlen;
    int e = wide(fn) ? 4 : 1;
    int64_t dl = 0, sl;
    uint64_t needed;                       /* what glibc compares with destlen */
    switch (plain_of(fn)) {
    case EMSAN_FN_STRCPY: case EMSAN_FN_STPCPY:                 /* (d, s, destlen) */
        destlen = n;
        if ((sl = guest_len(rt, s, UNBOUNDED / 4, e)) < 0) return;
        needed = (uint64_t)sl + 1;
        break;
    case EMSAN_FN_STRCAT:                                       /* (d, s, destlen) */
        destlen = n;
        if ((dl = guest_len(rt, d, UNBOUNDED / 4, e)) < 0 || (sl = guest_len(rt, s, UNBOUNDED / 4, e)) < 0) return;
        needed = (uint64_t)dl + (uint64_t)sl + 1;
        break;
    case EMSAN_FN_STRNCAT:                                      /* (d, s, n, destlen) */
        destlen = arg(rt, 3);
        if ((dl = guest_len(rt, d, UNBOUNDED / 4, e)) < 0 || (sl = guest_len(rt, s, n, e)) < 0) return;
        needed = (uint64_t)dl + (uint64_t)sl + 1;
        break;
    default:                                                    /* (d, s|c, n, destlen) */
        destlen = arg(rt, 3);
        needed = n;
        break;
    }
    if (needed <= destlen) {
        intercept_string_fn(k, own_plain(fn));  /* its arguments are the plain function's */
        return;
    }
    check_overflow(k, fn, d, s, n);
    /* glibc's own code runs on: its check fails and the program aborts, as natively */
}
