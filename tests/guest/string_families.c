/* The wide-character string functions and the span, search, case-insensitive and duplicating
 * ones on heap strings (tests/test_string_families.py).
 *
 *   ok          every function, correctly used, on heap strings of 1..300 elements: prints a
 *               checksum of the results per function (compared with the native run)
 *   over        for each function and each length in LENGTHS, a call that touches exactly one
 *               element past the end of a heap object, from its own caller over_<fn>_<len>
 *               (run with --continue: one report each, at the line marked @over.<fn>)
 * Heap memory past an object is emsan's redzone (zero), so an unterminated string ends there. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wchar.h>

#define NOINLINE __attribute__((noinline, noipa))
volatile uintptr_t sink;

static wchar_t *wide(int len, int seed, int terminated)
{
    wchar_t *s = malloc(sizeof(wchar_t) * (size_t)(len + (terminated ? 1 : 0)));
    for (int i = 0; i < len; i++) s[i] = (wchar_t)(0x20 + (i * 7 + seed) % 0x2FF0);
    if (terminated) s[len] = 0;
    return s;
}

static char *narrow(int len, int seed, int terminated)
{
    char *s = malloc((size_t)len + (terminated ? 1 : 0));
    for (int i = 0; i < len; i++) s[i] = (char)('a' + (i * 7 + seed) % 26);
    if (terminated) s[len] = 0;
    return s;
}

static uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001b3ULL; }
static uint64_t wsum(const wchar_t *s, size_t n) { uint64_t h = 0; for (size_t i = 0; i < n; i++) h = mix(h, (uint32_t)s[i]); return h; }
static uint64_t off(const void *base, const void *p) { return p ? (uint64_t)((const char *)p - (const char *)base) + 1 : 0; }
static int sign(int v) { return (v > 0) - (v < 0); }

/* ---- correct use, lengths 1..300 -------------------------------------------------------------- */
static void ok(void)
{
    uint64_t h[32] = {0};
    for (int len = 1; len <= 300; len++) {
        wchar_t *a = wide(len, 3, 1), *b = wide(len, 3, 1), *c = wide(len, 5, 1);
        wchar_t *d = malloc(sizeof(wchar_t) * (size_t)(2 * len + 8));
        h[0] = mix(h[0], wcslen(a));
        h[1] = mix(h[1], wcsnlen(a, (size_t)len / 2) + wcsnlen(a, (size_t)len + 5));
        h[2] = mix(h[2], off(a, wcschr(a, a[len / 2])) + off(a, wcschr(a, 0)) + off(a, wcschr(a, 1)));
        h[3] = mix(h[3], off(a, wcsrchr(a, a[0])) + off(a, wcsrchr(a, 0)) + off(a, wcsrchr(a, 1)));
        h[4] = mix(h[4], off(a, wmemchr(a, a[len - 1], (size_t)len)) + off(a, wmemchr(a, 1, (size_t)len)));
        h[5] = mix(h[5], (uint64_t)(sign(wcscmp(a, b)) + 3 * sign(wcscmp(a, c)) + 9 * sign(wcscmp(c, a))));
        h[6] = mix(h[6], (uint64_t)(sign(wcsncmp(a, c, (size_t)len / 2)) + 3 * sign(wcsncmp(a, b, 1000))));
        h[7] = mix(h[7], (uint64_t)(sign(wmemcmp(a, b, (size_t)len)) + 3 * sign(wmemcmp(a, c, (size_t)len))));
        h[8] = mix(h[8], off(d, wcscpy(d, a)) + wsum(d, (size_t)len + 1));
        h[9] = mix(h[9], off(d, wcpcpy(d, c)) + wsum(d, (size_t)len + 1));
        h[10] = mix(h[10], off(d, wcsncpy(d, a, (size_t)len + 7)) + wsum(d, (size_t)len + 7));
        h[11] = mix(h[11], off(d, wcpncpy(d, c, (size_t)len / 2 + 1)) + wsum(d, (size_t)len / 2 + 1));
        wcscpy(d, a);
        h[12] = mix(h[12], off(d, wcscat(d, c)) + wsum(d, 2 * (size_t)len + 1));
        d[len / 2] = 0;
        h[13] = mix(h[13], off(d, wcsncat(d, a, (size_t)len / 3 + 1)) + wsum(d, wcslen(d) + 1));
        h[14] = mix(h[14], off(d, wmemcpy(d, c, (size_t)len)) + wsum(d, (size_t)len));
        h[15] = mix(h[15], off(d, wmemmove(d + 1, d, (size_t)len)) + wsum(d, (size_t)len + 1));
        h[16] = mix(h[16], off(d, wmempcpy(d, a, (size_t)len)) + wsum(d, (size_t)len));
        h[17] = mix(h[17], off(d, wmemset(d, (wchar_t)(0x1234 + len), (size_t)len + 2)) + wsum(d, (size_t)len + 2));
        wchar_t *w = wcsdup(c);
        h[18] = mix(h[18], wsum(w, (size_t)len + 1));
        free(w);
        free(a); free(b); free(c); free(d);

        char *s = narrow(len, 1, 1), *t = narrow(len, 1, 1);
        char *u = malloc((size_t)len + 1);
        for (int i = 0; i <= len; i++) u[i] = (char)(s[i] >= 'a' && s[i] <= 'z' && i % 3 ? s[i] - 32 : s[i]);
        h[19] = mix(h[19], strspn(s, "abcdefghijklm") + strspn(s, "nopqrstuvwxyz") * 1000);
        h[20] = mix(h[20], strcspn(s, "xyz") + strcspn(s, "q") * 1000);
        h[21] = mix(h[21], off(s, strpbrk(s, "zy")) + off(s, strpbrk(s, "#")));
        h[22] = mix(h[22], off(s, strstr(s, s + len / 2)) + off(s, strstr(s, "zzz")) + off(s, strstr(s, "")));
        h[23] = mix(h[23], off(s, memmem(s, (size_t)len, s + len / 3, (size_t)(len - len / 3))) +
                           off(s, memmem(s, (size_t)len, "qq", 2)));
        h[24] = mix(h[24], (uint64_t)(sign(strcasecmp(s, u)) + 3 * sign(strcasecmp(s, "hello")) + 9 * strcasecmp("a", u)));
        h[25] = mix(h[25], (uint64_t)(sign(strncasecmp(s, u, (size_t)len)) + 3 * sign(strncasecmp(s, "MmM", 2))));
        char *x = strdup(s), *y = strndup(s, (size_t)len / 2);
        h[26] = mix(h[26], strlen(x) * 1000 + strlen(y) + (uint64_t)strcmp(x, t));
        free(x); free(y); free(s); free(t); free(u);
    }
    static const char *names[] = {"wcslen", "wcsnlen", "wcschr", "wcsrchr", "wmemchr", "wcscmp", "wcsncmp",
        "wmemcmp", "wcscpy", "wcpcpy", "wcsncpy", "wcpncpy", "wcscat", "wcsncat", "wmemcpy", "wmemmove",
        "wmempcpy", "wmemset", "wcsdup", "strspn", "strcspn", "strpbrk", "strstr", "memmem", "strcasecmp",
        "strncasecmp", "strdup/strndup"};
    for (int i = 0; i < 27; i++) printf("%s %016llx\n", names[i], (unsigned long long)h[i]);
}

/* ---- one element past the end ------------------------------------------------------------------ */
#define LENGTHS(X, fn) X(fn, 1) X(fn, 2) X(fn, 15) X(fn, 64) X(fn, 299)

/* over_<fn>_<n>: the call with len = n, each its own call site (a report is one per site). */
#define CALLER(fn, n) static NOINLINE void over_##fn##_##n(void) { int len = n; BODY_##fn }

/* The bodies: x/s is an unterminated object of len elements, followed by emsan's zero redzone. */
#define BODY_wcslen { wchar_t *x = wide(len, 1, 0); sink = wcslen(x); }
LENGTHS(CALLER, wcslen)  /* @over.wcslen */
#define BODY_wcsnlen { wchar_t *x = wide(len, 1, 0); sink = wcsnlen(x, (size_t)len + 1); }
LENGTHS(CALLER, wcsnlen)  /* @over.wcsnlen */
#define BODY_wcschr { wchar_t *x = wide(len, 1, 0); sink = (uintptr_t)wcschr(x, 1); }
LENGTHS(CALLER, wcschr)  /* @over.wcschr */
#define BODY_wcsrchr { wchar_t *x = wide(len, 1, 0); sink = (uintptr_t)wcsrchr(x, 1); }
LENGTHS(CALLER, wcsrchr)  /* @over.wcsrchr */
#define BODY_wmemchr { wchar_t *x = wide(len, 1, 0); sink = (uintptr_t)wmemchr(x, 1, (size_t)len + 1); }
LENGTHS(CALLER, wmemchr)  /* @over.wmemchr */
#define BODY_wcscmp { wchar_t *x = wide(len, 1, 0), *y = wide(len + 1, 1, 1); y[len] = L'x'; sink = (uintptr_t)wcscmp(x, y); }
LENGTHS(CALLER, wcscmp)  /* @over.wcscmp */
#define BODY_wcsncmp { wchar_t *x = wide(len, 1, 0), *y = wide(len + 1, 1, 1); y[len] = L'x'; sink = (uintptr_t)wcsncmp(x, y, (size_t)len + 1); }
LENGTHS(CALLER, wcsncmp)  /* @over.wcsncmp */
#define BODY_wmemcmp { wchar_t *x = wide(len, 1, 0), *y = wide(len + 1, 1, 1); sink = (uintptr_t)wmemcmp(x, y, (size_t)len + 1); }
LENGTHS(CALLER, wmemcmp)  /* @over.wmemcmp */
#define BODY_wcscpy { wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len, 2, 1); sink = (uintptr_t)wcscpy(d, s); }
LENGTHS(CALLER, wcscpy)  /* @over.wcscpy */
#define BODY_wcpcpy { wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len, 2, 1); sink = (uintptr_t)wcpcpy(d, s); }
LENGTHS(CALLER, wcpcpy)  /* @over.wcpcpy */
#define BODY_wcsncpy { wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len, 2, 1); sink = (uintptr_t)wcsncpy(d, s, (size_t)len + 1); }
LENGTHS(CALLER, wcsncpy)  /* @over.wcsncpy */
#define BODY_wcpncpy { wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len, 2, 1); sink = (uintptr_t)wcpncpy(d, s, (size_t)len + 1); }
LENGTHS(CALLER, wcpncpy)  /* @over.wcpncpy */
#define BODY_wcscat { int a = len / 2; wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len - a, 2, 1); \
               wmemset(d, L'q', (size_t)a); d[a] = 0; sink = (uintptr_t)wcscat(d, s); }
LENGTHS(CALLER, wcscat)  /* @over.wcscat */
#define BODY_wcsncat { int a = len / 2; wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len - a, 2, 1); \
                wmemset(d, L'q', (size_t)a); d[a] = 0; sink = (uintptr_t)wcsncat(d, s, (size_t)(len - a)); }
LENGTHS(CALLER, wcsncat)  /* @over.wcsncat */
#define BODY_wmemcpy { wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len + 1, 2, 0); sink = (uintptr_t)wmemcpy(d, s, (size_t)len + 1); }
LENGTHS(CALLER, wmemcpy)  /* @over.wmemcpy */
#define BODY_wmemmove { wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len + 1, 2, 0); sink = (uintptr_t)wmemmove(d, s, (size_t)len + 1); }
LENGTHS(CALLER, wmemmove)  /* @over.wmemmove */
#define BODY_wmempcpy { wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len), *s = wide(len + 1, 2, 0); sink = (uintptr_t)wmempcpy(d, s, (size_t)len + 1); }
LENGTHS(CALLER, wmempcpy)  /* @over.wmempcpy */
#define BODY_wmemset { wchar_t *d = malloc(sizeof(wchar_t) * (size_t)len); sink = (uintptr_t)wmemset(d, L'z', (size_t)len + 1); }
LENGTHS(CALLER, wmemset)  /* @over.wmemset */
#define BODY_wcsdup { wchar_t *x = wide(len, 1, 0); sink = (uintptr_t)wcsdup(x); }
LENGTHS(CALLER, wcsdup)  /* @over.wcsdup */
#define BODY_strspn { char *x = narrow(len, 1, 0); sink = strspn(x, "abcdefghijklmnopqrstuvwxyz"); }
LENGTHS(CALLER, strspn)  /* @over.strspn */
#define BODY_strcspn { char *x = narrow(len, 1, 0); sink = strcspn(x, "#"); }
LENGTHS(CALLER, strcspn)  /* @over.strcspn */
#define BODY_strpbrk { char *x = narrow(len, 1, 0); sink = (uintptr_t)strpbrk(x, "#"); }
LENGTHS(CALLER, strpbrk)  /* @over.strpbrk */
#define BODY_strstr { char *x = narrow(len, 1, 0); sink = (uintptr_t)strstr(x, "#!"); }
LENGTHS(CALLER, strstr)  /* @over.strstr */
#define BODY_memmem { char *x = narrow(len, 1, 0); sink = (uintptr_t)memmem(x, (size_t)len + 1, "#", 1); }
LENGTHS(CALLER, memmem)  /* @over.memmem */
#define BODY_strcasecmp { char *x = narrow(len, 1, 0), *y = narrow(len + 1, 1, 1); y[len] = 'x'; sink = (uintptr_t)strcasecmp(x, y); }
LENGTHS(CALLER, strcasecmp)  /* @over.strcasecmp */
#define BODY_strncasecmp { char *x = narrow(len, 1, 0), *y = narrow(len + 1, 1, 1); y[len] = 'x'; sink = (uintptr_t)strncasecmp(x, y, (size_t)len + 1); }
LENGTHS(CALLER, strncasecmp)  /* @over.strncasecmp */
#define BODY_strdup { char *x = narrow(len, 1, 0); sink = (uintptr_t)strdup(x); }
LENGTHS(CALLER, strdup)  /* @over.strdup */
#define BODY_strndup { char *x = narrow(len, 1, 0); sink = (uintptr_t)strndup(x, (size_t)len + 1); }
LENGTHS(CALLER, strndup)  /* @over.strndup */

#define RUN(fn, n) over_##fn##_##n();
#define ALL(fn) LENGTHS(RUN, fn)

static void over(void)
{
    ALL(wcslen) ALL(wcsnlen) ALL(wcschr) ALL(wcsrchr) ALL(wmemchr) ALL(wcscmp) ALL(wcsncmp) ALL(wmemcmp)
    ALL(wcscpy) ALL(wcpcpy) ALL(wcsncpy) ALL(wcpncpy) ALL(wcscat) ALL(wcsncat) ALL(wmemcpy) ALL(wmemmove)
    ALL(wmempcpy) ALL(wmemset) ALL(wcsdup) ALL(strspn) ALL(strcspn) ALL(strpbrk) ALL(strstr) ALL(memmem)
    ALL(strcasecmp) ALL(strncasecmp) ALL(strdup) ALL(strndup)
    printf("over done\n");
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "ok") == 0) ok();
    else if (argc > 1 && strcmp(argv[1], "over") == 0) over();
    else return 2;
    return 0;
}
