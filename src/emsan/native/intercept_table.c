/* Interceptors described by a table: the wide-character functions (wchar_t is 4 bytes on Linux,
 * x86-64 and arm64 alike), the span and search functions, the case-insensitive compares and the
 * duplicating functions. Each row names an operation on elements of 1 or 4 bytes; as in
 * intercept.c, the range the function may touch is checked once, as one access at its caller
 * (ASan's ranges), and the function is then performed on guest memory with no per-access
 * checks (strdup allocates from emsan's heap, as the guest's malloc would). The compares whose
 * result the C library defines beyond its sign (wcscmp returns the difference or not depending
 * on the library and the CPU; strcasecmp folds case by the locale) only check a good range and
 * let the guest's own code run within it; after a report they return the sign. */
#define _GNU_SOURCE                     /* memmem */
#include "internal.h"

#define CHUNK 256
#define NO_LIMIT (~0ULL >> 3)           /* "no count": still small enough to multiply by 4 */

enum op { OP_LEN, OP_FIND, OP_RFIND, OP_CMP, OP_CPY, OP_CAT, OP_MOVE, OP_SET, OP_SPAN, OP_SEARCH, OP_DUP };
#define F_COUNT 1       /* a count n of elements, in the argument after the strings */
#define F_END 2         /* returns the end of what it wrote (wcpcpy, wmempcpy) */
#define F_MEM 4         /* an array of n elements, not a string: no terminator */
#define F_REJECT 8      /* span: stop at an element in the set (strcspn, strpbrk) */
#define F_PTR 16        /* span: return a pointer or NULL (strpbrk) */
#define F_CHECK 32      /* compares: a good range is left to the guest's own code */

struct tfn { int fn; uint8_t op, elem, flags; };

static const struct tfn TABLE[] = {
    {EMSAN_FN_WCSLEN, OP_LEN, 4, 0},
    {EMSAN_FN_WCSNLEN, OP_LEN, 4, F_COUNT},
    {EMSAN_FN_WCSCHR, OP_FIND, 4, 0},
    {EMSAN_FN_WMEMCHR, OP_FIND, 4, F_COUNT | F_MEM},
    {EMSAN_FN_WCSRCHR, OP_RFIND, 4, 0},
    {EMSAN_FN_WCSCMP, OP_CMP, 4, F_CHECK},
    {EMSAN_FN_WCSNCMP, OP_CMP, 4, F_COUNT | F_CHECK},
    {EMSAN_FN_WMEMCMP, OP_CMP, 4, F_COUNT | F_MEM | F_CHECK},
    {EMSAN_FN_WCSCPY, OP_CPY, 4, 0},
    {EMSAN_FN_WCPCPY, OP_CPY, 4, F_END},
    {EMSAN_FN_WCSNCPY, OP_CPY, 4, F_COUNT},
    {EMSAN_FN_WCPNCPY, OP_CPY, 4, F_COUNT | F_END},
    {EMSAN_FN_WCSCAT, OP_CAT, 4, 0},
    {EMSAN_FN_WCSNCAT, OP_CAT, 4, F_COUNT},
    {EMSAN_FN_WMEMCPY, OP_MOVE, 4, 0},
    {EMSAN_FN_WMEMMOVE, OP_MOVE, 4, 0},
    {EMSAN_FN_WMEMPCPY, OP_MOVE, 4, F_END},
    {EMSAN_FN_WMEMSET, OP_SET, 4, 0},
    {EMSAN_FN_WCSDUP, OP_DUP, 4, 0},
    {EMSAN_FN_STRSPN, OP_SPAN, 1, 0},
    {EMSAN_FN_STRCSPN, OP_SPAN, 1, F_REJECT},
    {EMSAN_FN_STRPBRK, OP_SPAN, 1, F_REJECT | F_PTR},
    {EMSAN_FN_STRSTR, OP_SEARCH, 1, 0},
    {EMSAN_FN_MEMMEM, OP_SEARCH, 1, F_MEM},
    {EMSAN_FN_STRCASECMP, OP_CMP, 1, F_CHECK},
    {EMSAN_FN_STRNCASECMP, OP_CMP, 1, F_COUNT | F_CHECK},
    {EMSAN_FN_STRDUP, OP_DUP, 1, 0},
    {EMSAN_FN_STRNDUP, OP_DUP, 1, F_COUNT},
};

static inline int gget(heap_t *h, uint64_t a, void *buf, size_t n) { return mem_get(h->uc, guest_addr(h, a), buf, n); }
static inline int gput(heap_t *h, uint64_t a, const void *buf, size_t n) { return mem_put(h->uc, guest_addr(h, a), buf, n); }

static inline uint32_t elem_at(const uint8_t *p, int elem)
{
    uint32_t v = p[0];
    if (elem == 4) memcpy(&v, p, 4);
    return v;
}

/* What ends a scan. */
enum until { U_ZERO, U_VALUE, U_VALUE_OR_ZERO, U_SET_OR_ZERO, U_NOT_SET_OR_ZERO };
struct scan { enum until until; uint32_t value; const uint8_t *set; };      /* set: 256 bits */

static int stops(const struct scan *s, uint32_t v)
{
    switch (s->until) {
    case U_ZERO: return v == 0;
    case U_VALUE: return v == s->value;
    case U_VALUE_OR_ZERO: return v == s->value || v == 0;
    case U_SET_OR_ZERO: return v == 0 || (s->set[v >> 3] >> (v & 7) & 1);
    default: return v == 0 || !(s->set[v >> 3] >> (v & 7) & 1);
    }
}

/* Index of the first element of the array at a (at most max elements) that ends the scan, or
 * max; -1 if guest memory cannot be read. A read never crosses a CHUNK boundary, so an
 * unreadable page stops exactly where the function itself would fault. */
static int64_t scan(heap_t *h, uint64_t a, uint64_t max, int elem, const struct scan *s)
{
    uint8_t buf[CHUNK];
    uint64_t i = 0;
    while (i < max) {
        uint64_t at = a + i * (uint64_t)elem;
        size_t bytes = CHUNK - (at & (CHUNK - 1));
        bytes -= bytes % (size_t)elem;
        if (!bytes) bytes = (size_t)elem;                 /* an element across the boundary */
        if (bytes / (size_t)elem > max - i) bytes = (size_t)(max - i) * (size_t)elem;
        if (gget(h, at, buf, bytes)) return -1;
        for (size_t k = 0; k < bytes / (size_t)elem; k++)
            if (stops(s, elem_at(buf + k * (size_t)elem, elem))) return (int64_t)(i + k);
        i += bytes / (size_t)elem;
    }
    return (int64_t)max;
}

static int64_t length(heap_t *h, uint64_t a, uint64_t max, int elem)
{
    const struct scan s = {U_ZERO, 0, NULL};
    return scan(h, a, max, elem, &s);
}

static uint8_t *read_elems(heap_t *h, uint64_t a, uint64_t n, int elem)
{
    uint8_t *buf = malloc(n * (uint64_t)elem + 1);
    if (buf && n && gget(h, a, buf, n * (uint64_t)elem)) { free(buf); return NULL; }
    return buf;
}

/* Elements used by a compare of two strings (or arrays): up to and including the first that
 * differs (case-folded in ASCII for the 1-byte compares, as ASan measures strcasecmp) or the
 * terminator; -1 if unreadable. *res: the sign of the compare (wchar_t is signed on x86-64,
 * unsigned on arm64), or the difference of the folded bytes (strcasecmp). */
static int64_t compared(heap_t *h, uint64_t a, uint64_t b, uint64_t max, int elem, int strings, int64_t *res)
{
    *res = 0;
    uint8_t x[CHUNK], y[CHUNK];
    uint64_t i = 0;
    while (i < max) {
        size_t ca = CHUNK - ((a + i * (uint64_t)elem) & (CHUNK - 1)), cb = CHUNK - ((b + i * (uint64_t)elem) & (CHUNK - 1));
        size_t bytes = ca < cb ? ca : cb;
        bytes -= bytes % (size_t)elem;
        if (!bytes) bytes = (size_t)elem;
        if (bytes / (size_t)elem > max - i) bytes = (size_t)(max - i) * (size_t)elem;
        if (gget(h, a + i * (uint64_t)elem, x, bytes) || gget(h, b + i * (uint64_t)elem, y, bytes)) return -1;
        for (size_t k = 0; k < bytes / (size_t)elem; k++) {
            uint32_t u = elem_at(x + k * (size_t)elem, elem), v = elem_at(y + k * (size_t)elem, elem);
            if (elem == 1) {
                u = u - 'A' < 26 ? u + 32 : u;
                v = v - 'A' < 26 ? v + 32 : v;
            }
            if (u != v || (strings && u == 0)) {
                if (elem == 1) *res = (int64_t)u - (int64_t)v;
                else if (h->arm64) *res = u < v ? -1 : u > v;
                else *res = (int32_t)u < (int32_t)v ? -1 : (int32_t)u > (int32_t)v;
                return (int64_t)(i + k + 1);
            }
        }
        i += bytes / (size_t)elem;
    }
    return (int64_t)max;
}

/* check_range() of n elements; a count too large for the address space is reported as the
 * kernel reports a negative size. */
static int check_elems(heap_t *h, uint64_t a, uint64_t n, int elem, int is_write, int fn)
{
    uint64_t bytes = n > ~0ULL / (uint64_t)elem ? ~0ULL : n * (uint64_t)elem;    /* ~0: wraps */
    return check_range(h, a, bytes, is_write, fn);
}

/* Returns 0 with the function's result in *r, 1 to let the guest's code run, -1 if guest memory
 * could not be read (the guest's code runs then too, and faults where it would). */
static int perform(heap_t *h, const struct tfn *t, uint64_t a, uint64_t b, uint64_t n, uint64_t *r)
{
    int fn = t->fn, e = t->elem;
    uint64_t count = t->flags & F_COUNT ? n : NO_LIMIT;
    int64_t len, len2;
    uint8_t *buf;
    switch (t->op) {
    case OP_LEN:
        if ((len = length(h, a, count, e)) < 0) return -1;
        check_elems(h, a, (uint64_t)len < count ? (uint64_t)len + 1 : count, e, 0, fn);
        *r = (uint64_t)len;
        return 0;
    case OP_FIND: {
        struct scan s = {t->flags & F_MEM ? U_VALUE : U_VALUE_OR_ZERO, (uint32_t)(e == 1 ? b & 0xFF : b), NULL};
        if ((len = scan(h, a, count, e, &s)) < 0) return -1;
        check_elems(h, a, (uint64_t)len < count ? (uint64_t)len + 1 : count, e, 0, fn);
        uint32_t v = 0;
        if ((uint64_t)len < count && gget(h, a + (uint64_t)len * (uint64_t)e, &v, (size_t)e)) return -1;
        *r = (uint64_t)len < count && v == s.value ? a + (uint64_t)len * (uint64_t)e : 0;
        return 0;
    }
    case OP_RFIND:
        if ((len = length(h, a, NO_LIMIT, e)) < 0) return -1;
        check_elems(h, a, (uint64_t)len + 1, e, 0, fn);
        if (!(buf = read_elems(h, a, (uint64_t)len + 1, e))) return -1;
        *r = 0;
        for (int64_t i = len; i >= 0; i--)
            if (elem_at(buf + i * e, e) == (uint32_t)b) { *r = a + (uint64_t)i * (uint64_t)e; break; }
        free(buf);
        return 0;
    case OP_CMP: {
        int64_t res;
        if ((len = compared(h, a, b, count, e, !(t->flags & F_MEM), &res)) < 0) return -1;
        uint64_t used = t->flags & F_MEM ? count : (uint64_t)len;     /* the array compares may read all n */
        if (!check_elems(h, a, used, e, 0, fn) && !check_elems(h, b, used, e, 0, fn) && (t->flags & F_CHECK))
            return 1;
        *r = (uint64_t)res;
        return 0;
    }
    case OP_CPY: {
        int counted = t->flags & F_COUNT;
        if ((len = length(h, b, count, e)) < 0) return -1;
        uint64_t src = counted && (uint64_t)len >= count ? count : (uint64_t)len + 1;
        uint64_t dst = counted ? count : (uint64_t)len + 1;                 /* wcsncpy pads to n */
        if (!check_elems(h, b, src, e, 0, fn)) check_elems(h, a, dst, e, 1, fn);
        if (!(buf = calloc(dst * (uint64_t)e + 1, 1))) return -1;
        uint64_t want = counted ? (uint64_t)len : (uint64_t)len + 1;
        if (want && gget(h, b, buf, want * (uint64_t)e)) { free(buf); return -1; }
        gput(h, a, buf, dst * (uint64_t)e);
        free(buf);
        *r = t->flags & F_END ? a + (uint64_t)len * (uint64_t)e : a;
        return 0;
    }
    case OP_CAT:
        if ((len = length(h, a, NO_LIMIT, e)) < 0 || (len2 = length(h, b, count, e)) < 0) return -1;
        if (!check_elems(h, a, (uint64_t)len + 1, e, 0, fn) &&
            !check_elems(h, b, (uint64_t)len2 < count ? (uint64_t)len2 + 1 : count, e, 0, fn))
            check_elems(h, a + (uint64_t)len * (uint64_t)e, (uint64_t)len2 + 1, e, 1, fn);
        if (!(buf = calloc((uint64_t)len2 * (uint64_t)e + (uint64_t)e, 1))) return -1;
        if (len2 && gget(h, b, buf, (uint64_t)len2 * (uint64_t)e)) { free(buf); return -1; }
        gput(h, a + (uint64_t)len * (uint64_t)e, buf, ((uint64_t)len2 + 1) * (uint64_t)e);
        free(buf);
        *r = a;
        return 0;
    case OP_MOVE:
        /* as the kernel's checked memcpy: a bad range is reported and nothing is copied */
        *r = 0;
        if (check_elems(h, b, n, e, 0, fn) || check_elems(h, a, n, e, 1, fn)) return 0;
        if (!(buf = read_elems(h, b, n, e))) return -1;
        if (n) gput(h, a, buf, n * (uint64_t)e);
        free(buf);
        *r = t->flags & F_END ? a + n * (uint64_t)e : a;
        return 0;
    case OP_SET:
        *r = 0;
        if (check_elems(h, a, n, e, 1, fn)) return 0;
        if (!(buf = malloc(n * (uint64_t)e + 1))) return -1;
        for (uint64_t i = 0; i < n; i++) memcpy(buf + i * (uint64_t)e, &b, (size_t)e);
        if (n) gput(h, a, buf, n * (uint64_t)e);
        free(buf);
        *r = a;
        return 0;
    case OP_SPAN: {
        uint8_t set[32] = {0};
        if ((len2 = length(h, b, NO_LIMIT, 1)) < 0 || !(buf = read_elems(h, b, (uint64_t)len2, 1))) return -1;
        for (int64_t i = 0; i < len2; i++) set[buf[i] >> 3] |= (uint8_t)(1 << (buf[i] & 7));
        free(buf);
        struct scan s = {t->flags & F_REJECT ? U_SET_OR_ZERO : U_NOT_SET_OR_ZERO, 0, set};
        if ((len = scan(h, a, NO_LIMIT, 1, &s)) < 0) return -1;
        if (!check_range(h, a, (uint64_t)len + 1, 0, fn)) check_range(h, b, (uint64_t)len2 + 1, 0, fn);
        uint8_t at = 0;
        if (gget(h, a + (uint64_t)len, &at, 1)) return -1;
        *r = t->flags & F_PTR ? (at ? a + (uint64_t)len : 0) : (uint64_t)len;
        return 0;
    }
    case OP_SEARCH: {
        /* strstr(hay, needle); memmem(hay, haylen, needle, needlelen) */
        uint64_t needle = t->flags & F_MEM ? n : b, hl, nl;
        if (t->flags & F_MEM) {
            hl = b;
            nl = reg_get(h->uc, h->regs[EMSAN_REG_ARG0 + 3]);
        } else {
            if ((len = length(h, a, NO_LIMIT, 1)) < 0 || (len2 = length(h, needle, NO_LIMIT, 1)) < 0) return -1;
            hl = (uint64_t)len;
            nl = (uint64_t)len2;
        }
        uint8_t *hay = read_elems(h, a, hl, 1), *pat = read_elems(h, needle, nl, 1);
        const uint8_t *at = hay && pat ? memmem(hay, hl, pat, nl) : NULL;
        int ok = hay && pat;
        uint64_t pos = at ? (uint64_t)(at - hay) : 0;
        free(hay);
        free(pat);
        if (!ok) return -1;
        if (t->flags & F_MEM) {           /* ASan: both whole ranges */
            if (!check_range(h, a, hl, 0, fn)) check_range(h, needle, nl, 0, fn);
        } else if (!check_range(h, needle, nl + 1, 0, fn)) {
            check_range(h, a, at ? pos + nl : hl + 1, 0, fn);
        }
        *r = at ? a + pos : 0;
        return 0;
    }
    case OP_DUP: {
        /* strndup copies at most n characters and always terminates the copy */
        if ((len = length(h, a, count, e)) < 0) return -1;
        *r = 0;
        if (check_elems(h, a, (uint64_t)len < count ? (uint64_t)len + 1 : count, e, 0, fn)) return 0;
        if (!(buf = calloc(((uint64_t)len + 1) * (uint64_t)e, 1))) return -1;
        if (len && gget(h, a, buf, (uint64_t)len * (uint64_t)e)) { free(buf); return -1; }
        uint64_t p = heap_malloc(h, ((uint64_t)len + 1) * (uint64_t)e);
        shadow_sync(h, 0);          /* compiler-assisted mode: the guest sees the new object */
        if (p) gput(h, p, buf, ((uint64_t)len + 1) * (uint64_t)e);
        free(buf);
        *r = p;
        return 0;
    }
    }
    return -1;
}

void intercept_table_fn(heap_t *h, int fn)
{
    const struct tfn *t = NULL;
    for (size_t i = 0; i < sizeof TABLE / sizeof TABLE[0]; i++)
        if (TABLE[i].fn == fn) t = &TABLE[i];
    if (t == NULL) return;
    void *uc = h->uc;
    uint64_t a = reg_get(uc, h->regs[EMSAN_REG_ARG0]), b = reg_get(uc, h->regs[EMSAN_REG_ARG0 + 1]);
    uint64_t n = reg_get(uc, h->regs[EMSAN_REG_ARG0 + 2]), r = 0;
    if ((t->op == OP_DUP || t->op == OP_LEN) && (t->flags & F_COUNT)) n = b;   /* strndup, wcsnlen(s, n) */
    if (perform(h, t, a, b, n, &r)) return;                     /* the guest's own code runs */
    h->stats.intercepted++;
    return_to_caller(h, r);
}
