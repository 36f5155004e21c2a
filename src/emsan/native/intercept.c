/* Interceptors for the libc string and memory functions, narrow and wide (wchar_t is 4 bytes on
 * Linux, x86-64 and arm64 alike). Optimized libc code legally reads past a buffer's end
 * (aligned vector loads), and a bug in, say, memcpy belongs to its caller; so emsan checks
 * exactly the range the function is entitled to touch (ASan's ranges), once, and performs the
 * function itself on guest memory with no per-access checks (strdup allocates from emsan's
 * heap, as the guest's malloc would). If guest memory cannot be read, the interceptor declines
 * and the guest's own code runs (and faults as it would). The compares whose result the C
 * library defines beyond its sign (wcscmp returns the difference or the sign depending on the
 * library and the CPU; strcasecmp folds case by the locale) only check a good range and let the
 * guest's own code run within it; after a report they return the sign. */
#define _GNU_SOURCE                     /* memmem */
#include "kasan.h"

#define CHUNK 256
#define NO_LIMIT (~0ULL >> 3)           /* "no count": still small enough to multiply by 4 */

/* Guest memory through a pointer that may carry a tag (arm64 Top-Byte-Ignore). */
static inline int gget(kasan_t *k, uint64_t a, void *buf, size_t n) { return mem_get(k->rt->uc, guest_addr(k->rt, a), buf, n); }
static inline int gput(kasan_t *k, uint64_t a, const void *buf, size_t n) { return mem_put(k->rt->uc, guest_addr(k->rt, a), buf, n); }
static inline const uint8_t *gview(kasan_t *k, uint64_t a, uint8_t *buf, size_t n) { return mem_view(k->rt->uc, guest_addr(k->rt, a), buf, n); }

static inline uint32_t elem_at(const uint8_t *p, int elem)
{
    uint32_t v = p[0];
    if (elem == 4) memcpy(&v, p, 4);
    return v;
}

/* What ends a scan: an element equal to value (or a NUL too), or a byte in (not in) a set of
 * 256 bits, or a NUL. */
enum until { U_VALUE, U_VALUE_OR_NUL, U_IN_SET_OR_NUL, U_NOT_IN_SET_OR_NUL };
struct stop { enum until until; uint32_t value; const uint8_t *set; };

static inline int in_set(const uint8_t *set, uint32_t v) { return set[v >> 3] >> (v & 7) & 1; }

/* High bit of each byte of v that is not zero. */
static inline uint64_t nonzero_bytes(uint64_t v)
{
    const uint64_t low7 = 0x7F7F7F7F7F7F7F7FULL;
    return (((v & low7) + low7) | v) & ~low7;
}
#define HIGH_BITS 0x8080808080808080ULL

/* Index of the first of the count elements at p that ends the scan, or count. */
static size_t first_stop(const uint8_t *p, size_t count, int elem, const struct stop *st)
{
    if (elem == 1 && (st->until == U_VALUE || (st->until == U_VALUE_OR_NUL && st->value == 0))) {
        const uint8_t *z = memchr(p, (int)st->value, count);
        return z ? (size_t)(z - p) : count;
    }
    if (elem == 1 && st->until == U_VALUE_OR_NUL) {          /* strchr: eight bytes at a time */
        const uint64_t pattern = 0x0101010101010101ULL * (st->value & 0xFF);
        size_t i = 0;
        for (; i + 8 <= count; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            uint64_t stop = ~(nonzero_bytes(w) & nonzero_bytes(w ^ pattern)) & HIGH_BITS;
            if (stop) return i + (size_t)__builtin_ctzll(stop) / 8;     /* little-endian hosts */
        }
        for (; i < count; i++)
            if (p[i] == st->value || !p[i]) return i;
        return count;
    }
    for (size_t i = 0; i < count; i++) {
        uint32_t v = elem_at(p + i * (size_t)elem, elem);
        switch (st->until) {
        case U_VALUE: if (v == st->value) return i; break;
        case U_VALUE_OR_NUL: if (v == st->value || v == 0) return i; break;
        case U_IN_SET_OR_NUL: if (v == 0 || in_set(st->set, v)) return i; break;
        case U_NOT_IN_SET_OR_NUL: if (v == 0 || !in_set(st->set, v)) return i; break;
        }
    }
    return count;
}

/* Bytes to read at a (at most max elements): to the end of its CHUNK, whole elements (one
 * element across the boundary at least). An unreadable page then stops a scan exactly where
 * the function itself would fault. */
static size_t piece(uint64_t a, uint64_t max, int elem)
{
    size_t bytes = CHUNK - (a & (CHUNK - 1));
    bytes -= bytes % (size_t)elem;
    if (!bytes) bytes = (size_t)elem;
    if (bytes / (size_t)elem > max) bytes = (size_t)max * (size_t)elem;
    return bytes;
}

/* Index of the first element of the array at s (at most max elements) that ends the scan, or
 * max; -1 if guest memory cannot be read. */
static int64_t guest_scan(kasan_t *k, uint64_t s, uint64_t max, int elem, const struct stop *st)
{
    uint8_t buf[CHUNK];
    uint64_t n = 0;
    while (n < max) {
        uint64_t a = s + n * (uint64_t)elem;
        size_t bytes = piece(a, max - n, elem), count = bytes / (size_t)elem;
        const uint8_t *p = gview(k, a, buf, bytes);
        if (!p) return -1;
        size_t i = first_stop(p, count, elem, st);
        if (i < count) return (int64_t)(n + i);
        n += count;
    }
    return (int64_t)max;
}

/* Length of the string at s in elements, looking at most max; -1 if memory is unreadable. */
static int64_t guest_strnlen(kasan_t *k, uint64_t s, uint64_t max, int elem)
{
    const struct stop st = {U_VALUE, 0, NULL};
    return guest_scan(k, s, max, elem, &st);
}

/* n bytes of guest memory in a new host buffer (one more byte allocated, for a NUL). */
static int read_block(kasan_t *k, uint64_t a, uint64_t n, uint8_t **out)
{
    *out = malloc(n + 1);
    if (!*out || (n && gget(k, a, *out, n))) { free(*out); *out = NULL; return -1; }
    return 0;
}

/* Index of the first of n bytes where x and y differ (or, for strings, x holds a NUL), or n;
 * eight bytes at a time. */
static size_t first_difference(const uint8_t *x, const uint8_t *y, size_t n, int strings)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t u, v;
        memcpy(&u, x + i, 8);
        memcpy(&v, y + i, 8);
        uint64_t stop = nonzero_bytes(u ^ v) | (strings ? ~nonzero_bytes(u) & HIGH_BITS : 0);
        if (stop) return i + (size_t)__builtin_ctzll(stop) / 8;     /* little-endian hosts */
    }
    for (; i < n; i++)
        if (x[i] != y[i] || (strings && !x[i])) return i;
    return n;
}

/* Elements a compare of two strings (or arrays) looks at: up to and including the first that
 * differs or the terminator (*used); *res: for bytes their difference (case-folded in ASCII
 * with fold, as ASan measures strcasecmp), for wide characters the sign (wchar_t is signed on
 * x86-64, unsigned on arm64). -1 if memory is unreadable. */
static int compare(kasan_t *k, uint64_t a, uint64_t b, uint64_t max, int elem, int strings, int fold,
                   uint64_t *used, int64_t *res)
{
    uint8_t x[CHUNK], y[CHUNK];
    uint64_t n = 0;
    while (n < max) {
        uint64_t pa = a + n * (uint64_t)elem, pb = b + n * (uint64_t)elem;
        size_t ca = piece(pa, max - n, elem), cb = piece(pb, max - n, elem), bytes = ca < cb ? ca : cb;
        const uint8_t *px = gview(k, pa, x, bytes), *py = px ? gview(k, pb, y, bytes) : NULL;
        if (!py) return -1;
        /* the plain byte compares skip to their first difference (or NUL) */
        size_t from = elem == 1 && !fold ? first_difference(px, py, bytes, strings) : 0;
        for (size_t i = from; i < bytes / (size_t)elem; i++) {
            uint32_t u = elem_at(px + i * (size_t)elem, elem), v = elem_at(py + i * (size_t)elem, elem);
            if (fold) {
                u = u - 'A' < 26 ? u + 32 : u;
                v = v - 'A' < 26 ? v + 32 : v;
            }
            if (u != v || (strings && u == 0)) {
                *used = n + i + 1;
                if (elem == 1) *res = (int64_t)u - (int64_t)v;
                else if (k->rt->arm64) *res = u < v ? -1 : u > v;
                else *res = (int32_t)u < (int32_t)v ? -1 : (int32_t)u > (int32_t)v;
                return 0;
            }
        }
        n += bytes / (size_t)elem;
    }
    *used = max;
    *res = 0;
    return 0;
}

/* check_range() of n elements; a count too large for the address space is reported as the
 * kernel reports a negative size. */
static int check_elems(kasan_t *k, uint64_t a, uint64_t n, int elem, int is_write, int fn)
{
    uint64_t bytes = n > ~0ULL / (uint64_t)elem ? ~0ULL : n * (uint64_t)elem;   /* ~0: wraps */
    return check_range(k, a, bytes, is_write, fn);
}

/* The arguments of an intercepted call (a, b, n: its first three), the size of its elements
 * (1, or 4 for the wide functions) and the result it returns. Each handler checks the range its
 * function may touch, does the function's work and returns 0, or nonzero when the guest's own
 * code is to run (guest memory could not be read; a compare's good range). */
struct scall { int fn, elem; uint64_t a, b, n, r; };

/* strlen, strnlen, wcslen, wcsnlen */
static int do_strlen(kasan_t *k, struct scall *c)
{
    uint64_t max = c->fn == EMSAN_FN_STRNLEN || c->fn == EMSAN_FN_WCSNLEN ? c->b : NO_LIMIT;
    int64_t len = guest_strnlen(k, c->a, max, c->elem);
    if (len < 0) return -1;
    check_elems(k, c->a, (uint64_t)len < max ? (uint64_t)len + 1 : max, c->elem, 0, c->fn);
    c->r = (uint64_t)len;
    return 0;
}

/* strchr, strchrnul, rawmemchr, memchr, wcschr, wmemchr: the first c, looking no further than
 * the function may */
static int do_find(kasan_t *k, struct scall *c)
{
    int fn = c->fn, e = c->elem;
    int at_nul = fn == EMSAN_FN_STRCHR || fn == EMSAN_FN_STRCHRNUL || fn == EMSAN_FN_WCSCHR;
    uint64_t max = fn == EMSAN_FN_MEMCHR || fn == EMSAN_FN_WMEMCHR ? c->n : NO_LIMIT;
    const struct stop st = {at_nul ? U_VALUE_OR_NUL : U_VALUE, (uint32_t)(e == 1 ? c->b & 0xFF : c->b), NULL};
    int64_t len = guest_scan(k, c->a, max, e, &st);
    if (len < 0) return -1;
    check_elems(k, c->a, (uint64_t)len < max ? (uint64_t)len + 1 : max, e, 0, fn);
    uint64_t at = c->a + (uint64_t)len * (uint64_t)e;
    uint8_t v[4] = {0};
    if (at_nul && (uint64_t)len < max && gget(k, at, v, (size_t)e)) return -1;
    int found = (uint64_t)len < max && (!at_nul || elem_at(v, e) == st.value || fn == EMSAN_FN_STRCHRNUL);
    c->r = found ? at : 0;
    return 0;
}

/* strrchr, memrchr, wcsrchr: the last c */
static int do_rfind(kasan_t *k, struct scall *c)
{
    int e = c->elem;
    uint64_t n = c->n;
    uint8_t *buf;
    if (c->fn != EMSAN_FN_MEMRCHR) {
        int64_t len = guest_strnlen(k, c->a, NO_LIMIT, e);
        if (len < 0) return -1;
        n = (uint64_t)len + 1;
        check_elems(k, c->a, n, e, 0, c->fn);
        if (read_block(k, c->a, n * (uint64_t)e, &buf)) return -1;
    } else {
        if (read_block(k, c->a, n, &buf)) return -1;
        check_range(k, c->a, n, 0, c->fn);
    }
    uint32_t want = (uint32_t)(e == 1 ? c->b & 0xFF : c->b);
    c->r = 0;
    for (uint64_t i = n; i-- > 0;) if (elem_at(buf + i * (uint64_t)e, e) == want) { c->r = c->a + i * (uint64_t)e; break; }
    free(buf);
    return 0;
}

/* strcmp, strncmp, memcmp, wcscmp, wcsncmp, wmemcmp, strcasecmp, strncasecmp */
static int do_compare(kasan_t *k, struct scall *c)
{
    int fn = c->fn, e = c->elem;
    int array = fn == EMSAN_FN_MEMCMP || fn == EMSAN_FN_WMEMCMP;
    int fold = fn == EMSAN_FN_STRCASECMP || fn == EMSAN_FN_STRNCASECMP;
    uint64_t max = fn == EMSAN_FN_STRCMP || fn == EMSAN_FN_WCSCMP || fn == EMSAN_FN_STRCASECMP ? NO_LIMIT : c->n;
    uint64_t used;
    int64_t res;
    if (compare(k, c->a, c->b, max, e, !array, fold, &used, &res)) return -1;
    uint64_t span = array ? max : used;                     /* the array compares may read all n */
    int bad = check_elems(k, c->a, span, e, 0, fn) || check_elems(k, c->b, span, e, 0, fn);
    if (!bad && (e == 4 || fold)) return 1;                 /* a result beyond its sign: the guest's */
    c->r = (uint64_t)res;
    return 0;
}

/* strcpy, stpcpy, strncpy, stpncpy and their wide twins */
static int do_strcpy(kasan_t *k, struct scall *c)
{
    int fn = c->fn, e = c->elem;
    int bounded = fn == EMSAN_FN_STRNCPY || fn == EMSAN_FN_STPNCPY || fn == EMSAN_FN_WCSNCPY || fn == EMSAN_FN_WCPNCPY;
    int64_t len = guest_strnlen(k, c->b, bounded ? c->n : NO_LIMIT, e);
    if (len < 0) return -1;
    /* strncpy pads with NULs to n; the others copy the string and its NUL */
    uint64_t src = bounded && (uint64_t)len >= c->n ? c->n : (uint64_t)len + 1;
    uint64_t dst = bounded ? c->n : (uint64_t)len + 1;
    if (!check_elems(k, c->b, src, e, 0, fn)) check_elems(k, c->a, dst, e, 1, fn);
    if (dst > NO_LIMIT) return -1;                          /* reported: no count of that size */
    uint8_t *buf = calloc(dst * (uint64_t)e + 1, 1);
    uint64_t want = bounded ? (uint64_t)len : (uint64_t)len + 1;
    if (!buf || (want && gget(k, c->b, buf, want * (uint64_t)e))) { free(buf); return -1; }
    gput(k, c->a, buf, dst * (uint64_t)e);
    free(buf);
    int end = fn == EMSAN_FN_STPCPY || fn == EMSAN_FN_STPNCPY || fn == EMSAN_FN_WCPCPY || fn == EMSAN_FN_WCPNCPY;
    c->r = end ? c->a + (uint64_t)len * (uint64_t)e : c->a;
    return 0;
}

/* strcat, strncat, wcscat, wcsncat */
static int do_strcat(kasan_t *k, struct scall *c)
{
    int e = c->elem, bounded = c->fn == EMSAN_FN_STRNCAT || c->fn == EMSAN_FN_WCSNCAT;
    int64_t len = guest_strnlen(k, c->a, NO_LIMIT, e), len2;
    if (len < 0) return -1;
    if ((len2 = guest_strnlen(k, c->b, bounded ? c->n : NO_LIMIT, e)) < 0) return -1;
    uint64_t end = c->a + (uint64_t)len * (uint64_t)e;
    if (!check_elems(k, c->a, (uint64_t)len + 1, e, 0, c->fn) &&
        !check_elems(k, c->b, bounded && (uint64_t)len2 >= c->n ? c->n : (uint64_t)len2 + 1, e, 0, c->fn))
        check_elems(k, end, (uint64_t)len2 + 1, e, 1, c->fn);
    uint8_t *buf = calloc(((uint64_t)len2 + 1) * (uint64_t)e, 1);
    if (!buf || (len2 && gget(k, c->b, buf, (uint64_t)len2 * (uint64_t)e))) { free(buf); return -1; }
    gput(k, end, buf, ((uint64_t)len2 + 1) * (uint64_t)e);
    free(buf);
    c->r = c->a;
    return 0;
}

/* memcpy, memmove, mempcpy, memset and their wide twins: as the kernel's checked versions, a
 * bad range is reported and nothing is written. */
static int do_memory(kasan_t *k, struct scall *c)
{
    int fn = c->fn, e = c->elem, set = fn == EMSAN_FN_MEMSET || fn == EMSAN_FN_WMEMSET;
    c->r = 0;
    if ((!set && check_elems(k, c->b, c->n, e, 0, fn)) || check_elems(k, c->a, c->n, e, 1, fn)) return 0;
    uint64_t bytes = c->n * (uint64_t)e;
    uint8_t *buf;
    if (set) {
        if (!(buf = malloc(bytes + 1))) return -1;
        if (e == 1) memset(buf, (int)(c->b & 0xFF), bytes);
        else for (uint64_t i = 0; i < c->n; i++) memcpy(buf + i * 4, &c->b, 4);
    } else if (read_block(k, c->b, bytes, &buf)) {
        return -1;
    }
    if (bytes) gput(k, c->a, buf, bytes);
    free(buf);
    c->r = fn == EMSAN_FN_MEMPCPY || fn == EMSAN_FN_WMEMPCPY ? c->a + bytes : c->a;
    return 0;
}

/* strspn, strcspn, strpbrk: the span of s (c->a) in or out of the set of bytes c->b */
static int do_span(kasan_t *k, struct scall *c)
{
    int reject = c->fn != EMSAN_FN_STRSPN;
    uint8_t set[32] = {0}, *accept;
    int64_t len, setlen = guest_strnlen(k, c->b, NO_LIMIT, 1);
    if (setlen < 0 || read_block(k, c->b, (uint64_t)setlen, &accept)) return -1;
    for (int64_t i = 0; i < setlen; i++) set[accept[i] >> 3] |= (uint8_t)(1 << (accept[i] & 7));
    free(accept);
    const struct stop st = {reject ? U_IN_SET_OR_NUL : U_NOT_IN_SET_OR_NUL, 0, set};
    if ((len = guest_scan(k, c->a, NO_LIMIT, 1, &st)) < 0) return -1;
    if (!check_range(k, c->a, (uint64_t)len + 1, 0, c->fn)) check_range(k, c->b, (uint64_t)setlen + 1, 0, c->fn);
    uint8_t at = 0;
    if (gget(k, c->a + (uint64_t)len, &at, 1)) return -1;
    c->r = c->fn == EMSAN_FN_STRPBRK ? (at ? c->a + (uint64_t)len : 0) : (uint64_t)len;
    return 0;
}

/* strstr(hay, needle); memmem(hay, haylen, needle, needlelen) */
static int do_search(kasan_t *k, struct scall *c)
{
    int mem = c->fn == EMSAN_FN_MEMMEM;
    uint64_t needle = mem ? c->n : c->b, hl, nl;
    if (mem) {
        hl = c->b;
        nl = reg(k->rt, EMSAN_REG_ARG0 + 3);
    } else {
        int64_t len = guest_strnlen(k, c->a, NO_LIMIT, 1), len2 = guest_strnlen(k, needle, NO_LIMIT, 1);
        if (len < 0 || len2 < 0) return -1;
        hl = (uint64_t)len;
        nl = (uint64_t)len2;
    }
    uint8_t *hay, *pat;
    if (read_block(k, c->a, hl, &hay)) return -1;
    if (read_block(k, needle, nl, &pat)) { free(hay); return -1; }
    const uint8_t *at = memmem(hay, hl, pat, nl);
    uint64_t pos = at ? (uint64_t)(at - hay) : 0;
    free(hay);
    free(pat);
    if (mem) {                                  /* ASan: both whole ranges */
        if (!check_range(k, c->a, hl, 0, c->fn)) check_range(k, needle, nl, 0, c->fn);
    } else if (!check_range(k, needle, nl + 1, 0, c->fn)) {
        check_range(k, c->a, at ? pos + nl : hl + 1, 0, c->fn);    /* the haystack up to the match */
    }
    c->r = at ? c->a + pos : 0;
    return 0;
}

/* strdup, strndup, wcsdup: strndup copies at most n characters and always terminates the copy */
static int do_dup(kasan_t *k, struct scall *c)
{
    int e = c->elem;
    uint64_t max = c->fn == EMSAN_FN_STRNDUP ? c->b : NO_LIMIT;
    int64_t len = guest_strnlen(k, c->a, max, e);
    if (len < 0) return -1;
    c->r = 0;
    if (check_elems(k, c->a, (uint64_t)len < max ? (uint64_t)len + 1 : max, e, 0, c->fn)) return 0;
    uint64_t bytes = ((uint64_t)len + 1) * (uint64_t)e;
    uint8_t *buf = calloc(bytes, 1);
    if (!buf || (len && gget(k, c->a, buf, (uint64_t)len * (uint64_t)e))) { free(buf); return -1; }
    uint64_t p = heap_malloc(k, bytes);
    shadow_sync(k, 0);                          /* compiler-assisted mode: the guest sees the new object */
    if (p) gput(k, p, buf, bytes);
    free(buf);
    c->r = p;
    return 0;
}

/* Compiler-assisted mode (the kernel's memintrinsics): the guest's own code checks its
 * accesses, and its C library's accesses need no check, so a memcpy, memmove, mempcpy or memset
 * whose ranges are good goes on into the guest's own routine, in translated code: no copy here
 * and no return through the engine, which costs more than the copy (bench/compiler.py). A bad
 * range takes the full interceptor, which reports it and writes nothing. The string functions
 * stay served in full: their ranges need the scan that is most of their work, and emsan's scan
 * costs less than the emulated one. */
static int guest_routine_ok(kasan_t *k, const struct scall *c)
{
    int set = c->fn == EMSAN_FN_MEMSET || c->fn == EMSAN_FN_WMEMSET;
    switch (c->fn) {
    case EMSAN_FN_MEMCPY: case EMSAN_FN_MEMMOVE: case EMSAN_FN_MEMPCPY: case EMSAN_FN_MEMSET:
    case EMSAN_FN_WMEMCPY: case EMSAN_FN_WMEMMOVE: case EMSAN_FN_WMEMPCPY: case EMSAN_FN_WMEMSET:
        break;
    default:
        return 0;
    }
    if (!c->n) return 1;
    if (c->n > NO_LIMIT || k->rt->sobj) return 0;     /* a size too large, stack objects: check_range() */
    uint64_t bytes = c->n * (uint64_t)c->elem;
    return c->a + bytes > c->a && !k->ops->range_bad(k, c->a, bytes) &&
           (set || (c->b + bytes > c->b && !k->ops->range_bad(k, c->b, bytes)));
}

/* Each handler is called from one place: the compiler inlines it, and a call costs one switch.
 * The wide functions are numbered together (emsan_native.h). */
void intercept_string_fn(kasan_t *k, int fn)
{
    rt_t *rt = k->rt;
    int elem = fn >= EMSAN_FN_WCSLEN && fn <= EMSAN_FN_WCSDUP ? 4 : 1;
    struct scall c = {fn, elem, reg(rt, EMSAN_REG_ARG0), reg(rt, EMSAN_REG_ARG0 + 1), reg(rt, EMSAN_REG_ARG0 + 2), 0};
    if (k->guest_routines && guest_routine_ok(k, &c)) {
        k->stats.intercepted++;
        k->routines_run++;
        return;
    }
    int declined;
    switch (fn) {
    case EMSAN_FN_STRLEN: case EMSAN_FN_STRNLEN: case EMSAN_FN_WCSLEN: case EMSAN_FN_WCSNLEN:
        declined = do_strlen(k, &c); break;
    case EMSAN_FN_STRCHR: case EMSAN_FN_STRCHRNUL: case EMSAN_FN_RAWMEMCHR: case EMSAN_FN_MEMCHR:
    case EMSAN_FN_WCSCHR: case EMSAN_FN_WMEMCHR:
        declined = do_find(k, &c); break;
    case EMSAN_FN_STRRCHR: case EMSAN_FN_MEMRCHR: case EMSAN_FN_WCSRCHR: declined = do_rfind(k, &c); break;
    case EMSAN_FN_STRCMP: case EMSAN_FN_STRNCMP: case EMSAN_FN_MEMCMP: case EMSAN_FN_WCSCMP: case EMSAN_FN_WCSNCMP:
    case EMSAN_FN_WMEMCMP: case EMSAN_FN_STRCASECMP: case EMSAN_FN_STRNCASECMP:
        declined = do_compare(k, &c); break;
    case EMSAN_FN_STRCPY: case EMSAN_FN_STPCPY: case EMSAN_FN_STRNCPY: case EMSAN_FN_STPNCPY:
    case EMSAN_FN_WCSCPY: case EMSAN_FN_WCPCPY: case EMSAN_FN_WCSNCPY: case EMSAN_FN_WCPNCPY:
        declined = do_strcpy(k, &c); break;
    case EMSAN_FN_STRCAT: case EMSAN_FN_STRNCAT: case EMSAN_FN_WCSCAT: case EMSAN_FN_WCSNCAT:
        declined = do_strcat(k, &c); break;
    case EMSAN_FN_MEMCPY: case EMSAN_FN_MEMMOVE: case EMSAN_FN_MEMPCPY: case EMSAN_FN_MEMSET:
    case EMSAN_FN_WMEMCPY: case EMSAN_FN_WMEMMOVE: case EMSAN_FN_WMEMPCPY: case EMSAN_FN_WMEMSET:
        declined = do_memory(k, &c); break;
    case EMSAN_FN_STRSPN: case EMSAN_FN_STRCSPN: case EMSAN_FN_STRPBRK: declined = do_span(k, &c); break;
    case EMSAN_FN_STRSTR: case EMSAN_FN_MEMMEM: declined = do_search(k, &c); break;
    case EMSAN_FN_STRDUP: case EMSAN_FN_STRNDUP: case EMSAN_FN_WCSDUP: declined = do_dup(k, &c); break;
    default: return;
    }
    if (declined) return;
    k->stats.intercepted++;
    return_to_caller(rt, c.r);
}
