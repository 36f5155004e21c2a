/* Interceptors for the libc string and memory functions. Optimized libc code legally reads
 * past a buffer's end (aligned vector loads), and a bug in, say, memcpy belongs to its caller;
 * so emsan checks exactly the range the function is entitled to touch, once, and performs
 * the function itself on guest memory with no per-access checks. If guest memory cannot be
 * read, the interceptor declines and the guest's own code runs (and faults as it would). */
#include "kasan.h"

#define CHUNK 256

/* Guest memory through a pointer that may carry a tag (arm64 Top-Byte-Ignore). */
static inline int gget(kasan_t *k, uint64_t a, void *buf, size_t n) { return mem_get(k->rt->uc, guest_addr(k->rt, a), buf, n); }
static inline int gput(kasan_t *k, uint64_t a, const void *buf, size_t n) { return mem_put(k->rt->uc, guest_addr(k->rt, a), buf, n); }

/* First position of byte c in [s, s+max) (forward), or of a NUL too with stop_at_nul; max if
 * none; -1 if memory is unreadable. Reads never cross a page. */
static int64_t guest_find(kasan_t *k, uint64_t s, uint64_t max, int c, int stop_at_nul)
{
    uint8_t buf[CHUNK];
    uint64_t n = 0;
    while (n < max) {
        uint64_t a = s + n;
        size_t chunk = CHUNK - (a & (CHUNK - 1));
        if (chunk > max - n) chunk = (size_t)(max - n);
        if (gget(k, a, buf, chunk)) return -1;
        if (!stop_at_nul || c == 0) {
            const uint8_t *z = memchr(buf, c, chunk);
            if (z) return (int64_t)(n + (uint64_t)(z - buf));
        } else {
            for (size_t i = 0; i < chunk; i++)
                if (buf[i] == (uint8_t)c || buf[i] == 0) return (int64_t)(n + i);
        }
        n += chunk;
    }
    return (int64_t)max;
}

/* Length of the string at s, looking at most max bytes; -1 if memory is unreadable. */
static int64_t guest_strnlen(kasan_t *k, uint64_t s, uint64_t max) { return guest_find(k, s, max, 0, 0); }

static int read_block(kasan_t *k, uint64_t a, uint64_t n, uint8_t **out)
{
    *out = malloc(n ? n : 1);
    if (n && gget(k, a, *out, n)) { free(*out); *out = NULL; return -1; }
    return 0;
}

static int compare(kasan_t *k, uint64_t a, uint64_t b, uint64_t max, int strings, uint64_t *used, int *res)
{
    uint8_t x[CHUNK], y[CHUNK];
    uint64_t n = 0;
    while (n < max) {
        size_t ca = CHUNK - ((a + n) & (CHUNK - 1)), cb = CHUNK - ((b + n) & (CHUNK - 1));
        size_t chunk = ca < cb ? ca : cb;
        if (chunk > max - n) chunk = (size_t)(max - n);
        if (gget(k, a + n, x, chunk) || gget(k, b + n, y, chunk)) return -1;
        for (size_t i = 0; i < chunk; i++) {
            if (x[i] != y[i] || (strings && x[i] == 0)) {
                *used = n + i + 1;
                *res = (int)x[i] - (int)y[i];
                return 0;
            }
        }
        n += chunk;
    }
    *used = max;
    *res = 0;
    return 0;
}

/* The arguments of an intercepted call (a, b, n: its first three) and the result it returns.
 * Each handler checks the range its function may touch, does the function's work and returns
 * 0, or -1 when guest memory could not be read (the guest's own code then runs). */
struct scall { int fn; uint64_t a, b, n, r; };
#define NO_LIMIT (~0ULL >> 1)

/* strlen, strnlen */
static int do_strlen(kasan_t *k, struct scall *c)
{
    uint64_t max = c->fn == EMSAN_FN_STRNLEN ? c->b : NO_LIMIT;
    int64_t len = guest_strnlen(k, c->a, max);
    if (len < 0) return -1;
    check_range(k, c->a, (uint64_t)len < max ? (uint64_t)len + 1 : max, 0, c->fn);
    c->r = (uint64_t)len;
    return 0;
}

/* strchr, strchrnul, rawmemchr, memchr: the first c, looking no further than the function may */
static int do_find(kasan_t *k, struct scall *c)
{
    int fn = c->fn, at_nul = fn == EMSAN_FN_STRCHR || fn == EMSAN_FN_STRCHRNUL;
    uint64_t max = fn == EMSAN_FN_MEMCHR ? c->n : NO_LIMIT;
    int64_t len = guest_find(k, c->a, max, (int)(c->b & 0xFF), at_nul);
    if (len < 0) return -1;
    check_range(k, c->a, (uint64_t)len < max ? (uint64_t)len + 1 : max, 0, fn);
    uint8_t ch = (uint8_t)c->b;
    if (at_nul) gget(k, c->a + (uint64_t)len, &ch, 1);
    int found = (uint64_t)len < max && (ch == (uint8_t)c->b || fn == EMSAN_FN_STRCHRNUL);
    c->r = found ? c->a + (uint64_t)len : 0;
    return 0;
}

/* strrchr, memrchr: the last c */
static int do_rfind(kasan_t *k, struct scall *c)
{
    uint64_t n = c->n;
    uint8_t *buf;
    if (c->fn == EMSAN_FN_STRRCHR) {
        int64_t len = guest_strnlen(k, c->a, NO_LIMIT);
        if (len < 0) return -1;
        n = (uint64_t)len + 1;
        check_range(k, c->a, n, 0, c->fn);
        if (read_block(k, c->a, n, &buf)) return -1;
    } else {
        if (read_block(k, c->a, n, &buf)) return -1;
        check_range(k, c->a, n, 0, c->fn);
    }
    c->r = 0;
    for (uint64_t i = n; i-- > 0;) if (buf[i] == (uint8_t)c->b) { c->r = c->a + i; break; }
    free(buf);
    return 0;
}

/* strcmp, strncmp, memcmp */
static int do_compare(kasan_t *k, struct scall *c)
{
    uint64_t used;
    int res;
    uint64_t max = c->fn == EMSAN_FN_STRCMP ? NO_LIMIT : c->n;
    if (compare(k, c->a, c->b, max, c->fn != EMSAN_FN_MEMCMP, &used, &res)) return -1;
    uint64_t span = c->fn == EMSAN_FN_MEMCMP ? c->n : used;     /* memcmp may read all n bytes */
    if (!check_range(k, c->a, span, 0, c->fn)) check_range(k, c->b, span, 0, c->fn);
    c->r = (uint64_t)(int64_t)res;
    return 0;
}

/* strcpy, stpcpy, strncpy, stpncpy */
static int do_strcpy(kasan_t *k, struct scall *c)
{
    int bounded = c->fn == EMSAN_FN_STRNCPY || c->fn == EMSAN_FN_STPNCPY;
    int64_t len = guest_strnlen(k, c->b, bounded ? c->n : NO_LIMIT);
    if (len < 0) return -1;
    /* strncpy pads with NULs to n; the others copy the string and its NUL */
    uint64_t src = bounded && (uint64_t)len >= c->n ? c->n : (uint64_t)len + 1;
    uint64_t dst = bounded ? c->n : (uint64_t)len + 1;
    if (!check_range(k, c->b, src, 0, c->fn)) check_range(k, c->a, dst, 1, c->fn);
    uint8_t *buf = calloc(dst ? dst : 1, 1);
    size_t want = bounded ? (size_t)len : (size_t)len + 1;
    if (want && gget(k, c->b, buf, want)) { free(buf); return -1; }
    gput(k, c->a, buf, dst);
    free(buf);
    c->r = c->fn == EMSAN_FN_STPCPY || c->fn == EMSAN_FN_STPNCPY ? c->a + (uint64_t)len : c->a;
    return 0;
}

/* strcat, strncat */
static int do_strcat(kasan_t *k, struct scall *c)
{
    int bounded = c->fn == EMSAN_FN_STRNCAT;
    int64_t len = guest_strnlen(k, c->a, NO_LIMIT), len2;
    if (len < 0) return -1;
    if ((len2 = guest_strnlen(k, c->b, bounded ? c->n : NO_LIMIT)) < 0) return -1;
    if (!check_range(k, c->a, (uint64_t)len + 1, 0, c->fn) &&
        !check_range(k, c->b, bounded && (uint64_t)len2 >= c->n ? c->n : (uint64_t)len2 + 1, 0, c->fn))
        check_range(k, c->a + (uint64_t)len, (uint64_t)len2 + 1, 1, c->fn);
    uint8_t *buf = calloc((size_t)len2 + 1, 1);
    if (len2 && gget(k, c->b, buf, (size_t)len2)) { free(buf); return -1; }
    gput(k, c->a + (uint64_t)len, buf, (size_t)len2 + 1);
    free(buf);
    c->r = c->a;
    return 0;
}

/* memcpy, memmove, mempcpy, memset: as the kernel's checked versions, a bad range is reported
 * and nothing is written. */
static int do_memory(kasan_t *k, struct scall *c)
{
    int set = c->fn == EMSAN_FN_MEMSET;
    c->r = 0;
    if ((!set && check_range(k, c->b, c->n, 0, c->fn)) || check_range(k, c->a, c->n, 1, c->fn)) return 0;
    uint8_t *buf;
    if (set) {
        buf = malloc(c->n ? c->n : 1);
        memset(buf, (int)(c->b & 0xFF), c->n);
    } else if (read_block(k, c->b, c->n, &buf)) {
        return -1;
    }
    if (c->n) gput(k, c->a, buf, c->n);
    free(buf);
    c->r = c->fn == EMSAN_FN_MEMPCPY ? c->a + c->n : c->a;
    return 0;
}

/* Each handler is called from one place: the compiler inlines it, and a call costs one switch. */
void intercept_string_fn(kasan_t *k, int fn)
{
    rt_t *rt = k->rt;
    struct scall c = {fn, reg(rt, EMSAN_REG_ARG0), reg(rt, EMSAN_REG_ARG0 + 1), reg(rt, EMSAN_REG_ARG0 + 2), 0};
    int declined;
    switch (fn) {
    case EMSAN_FN_STRLEN: case EMSAN_FN_STRNLEN: declined = do_strlen(k, &c); break;
    case EMSAN_FN_STRCHR: case EMSAN_FN_STRCHRNUL: case EMSAN_FN_RAWMEMCHR: case EMSAN_FN_MEMCHR:
        declined = do_find(k, &c); break;
    case EMSAN_FN_STRRCHR: case EMSAN_FN_MEMRCHR: declined = do_rfind(k, &c); break;
    case EMSAN_FN_STRCMP: case EMSAN_FN_STRNCMP: case EMSAN_FN_MEMCMP: declined = do_compare(k, &c); break;
    case EMSAN_FN_STRCPY: case EMSAN_FN_STPCPY: case EMSAN_FN_STRNCPY: case EMSAN_FN_STPNCPY:
        declined = do_strcpy(k, &c); break;
    case EMSAN_FN_STRCAT: case EMSAN_FN_STRNCAT: declined = do_strcat(k, &c); break;
    case EMSAN_FN_MEMCPY: case EMSAN_FN_MEMMOVE: case EMSAN_FN_MEMPCPY: case EMSAN_FN_MEMSET:
        declined = do_memory(k, &c); break;
    default: return;
    }
    if (declined) return;
    k->stats.intercepted++;
    return_to_caller(rt, c.r);
}
