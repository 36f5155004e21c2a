/* Interceptors for the libc string and memory functions. Optimized libc code legally reads
 * past a buffer's end (aligned vector loads), and a bug in, say, memcpy belongs to its caller;
 * so emsan checks exactly the range the function is entitled to touch, once, and performs
 * the function itself on guest memory with no per-access checks. If guest memory cannot be
 * read, the interceptor declines and the guest's own code runs (and faults as it would). */
#include "internal.h"

#define CHUNK 256

/* Guest memory through a pointer that may carry a tag (arm64 Top-Byte-Ignore). */
static inline int gget(heap_t *h, uint64_t a, void *buf, size_t n) { return mem_get(h->uc, guest_addr(h, a), buf, n); }
static inline int gput(heap_t *h, uint64_t a, const void *buf, size_t n) { return mem_put(h->uc, guest_addr(h, a), buf, n); }

/* Length of the string at s, looking at most max bytes; -1 if memory is unreadable. */
static int64_t guest_strnlen(heap_t *h, uint64_t s, uint64_t max)
{
    uint8_t buf[CHUNK];
    uint64_t n = 0;
    while (n < max) {
        uint64_t a = s + n;
        size_t chunk = CHUNK - (a & (CHUNK - 1));          /* never cross a page in one read */
        if (chunk > max - n) chunk = (size_t)(max - n);
        if (gget(h, a, buf, chunk)) return -1;
        uint8_t *z = memchr(buf, 0, chunk);
        if (z) return (int64_t)(n + (uint64_t)(z - buf));
        n += chunk;
    }
    return (int64_t)max;
}

/* First position of byte c in [s, s+max) (forward), or max; -1 if unreadable. */
static int64_t guest_find(heap_t *h, uint64_t s, uint64_t max, int c, int stop_at_nul)
{
    uint8_t buf[CHUNK];
    uint64_t n = 0;
    while (n < max) {
        uint64_t a = s + n;
        size_t chunk = CHUNK - (a & (CHUNK - 1));
        if (chunk > max - n) chunk = (size_t)(max - n);
        if (gget(h, a, buf, chunk)) return -1;
        for (size_t i = 0; i < chunk; i++)
            if (buf[i] == (uint8_t)c || (stop_at_nul && buf[i] == 0)) return (int64_t)(n + i);
        n += chunk;
    }
    return (int64_t)max;
}

static int read_block(heap_t *h, uint64_t a, uint64_t n, uint8_t **out)
{
    *out = malloc(n ? n : 1);
    if (n && gget(h, a, *out, n)) { free(*out); *out = NULL; return -1; }
    return 0;
}

static int compare(heap_t *h, uint64_t a, uint64_t b, uint64_t max, int strings, uint64_t *used, int *res)
{
    uint8_t x[CHUNK], y[CHUNK];
    uint64_t n = 0;
    while (n < max) {
        size_t ca = CHUNK - ((a + n) & (CHUNK - 1)), cb = CHUNK - ((b + n) & (CHUNK - 1));
        size_t chunk = ca < cb ? ca : cb;
        if (chunk > max - n) chunk = (size_t)(max - n);
        if (gget(h, a + n, x, chunk) || gget(h, b + n, y, chunk)) return -1;
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

void intercept_string_fn(heap_t *h, int fn)
{
    void *uc = h->uc;
    uint64_t a = reg_get(uc, h->regs[EMSAN_REG_ARG0]);
    uint64_t b = reg_get(uc, h->regs[EMSAN_REG_ARG0 + 1]);
    uint64_t n = reg_get(uc, h->regs[EMSAN_REG_ARG0 + 2]);
    uint64_t r = 0;
    int64_t len, len2;
    uint8_t *buf;
    switch (fn) {
    case EMSAN_FN_STRLEN:
        if ((len = guest_strnlen(h, a, ~0ULL >> 1)) < 0) return;
        check_range(h, a, (uint64_t)len + 1, 0, fn);
        r = (uint64_t)len;
        break;
    case EMSAN_FN_STRNLEN:
        if ((len = guest_strnlen(h, a, b)) < 0) return;
        check_range(h, a, (uint64_t)len < b ? (uint64_t)len + 1 : b, 0, fn);
        r = (uint64_t)len;
        break;
    case EMSAN_FN_STRCHR: case EMSAN_FN_STRCHRNUL:
        if ((len = guest_find(h, a, ~0ULL >> 1, (int)(b & 0xFF), 1)) < 0) return;
        check_range(h, a, (uint64_t)len + 1, 0, fn);
        {
            uint8_t ch;
            gget(h, a + (uint64_t)len, &ch, 1);
            r = (ch == (uint8_t)b || fn == EMSAN_FN_STRCHRNUL) ? a + (uint64_t)len : 0;
        }
        break;
    case EMSAN_FN_RAWMEMCHR:
        if ((len = guest_find(h, a, ~0ULL >> 1, (int)(b & 0xFF), 0)) < 0) return;
        check_range(h, a, (uint64_t)len + 1, 0, fn);
        r = a + (uint64_t)len;
        break;
    case EMSAN_FN_STRRCHR:
        if ((len = guest_strnlen(h, a, ~0ULL >> 1)) < 0) return;
        check_range(h, a, (uint64_t)len + 1, 0, fn);
        if (read_block(h, a, (uint64_t)len + 1, &buf)) return;
        r = 0;
        for (int64_t i = len; i >= 0; i--) if (buf[i] == (uint8_t)b) { r = a + (uint64_t)i; break; }
        free(buf);
        break;
    case EMSAN_FN_MEMCHR:
        if ((len = guest_find(h, a, n, (int)(b & 0xFF), 0)) < 0) return;
        check_range(h, a, (uint64_t)len < n ? (uint64_t)len + 1 : n, 0, fn);
        r = (uint64_t)len < n ? a + (uint64_t)len : 0;
        break;
    case EMSAN_FN_MEMRCHR:
        if (read_block(h, a, n, &buf)) return;
        check_range(h, a, n, 0, fn);
        r = 0;
        for (uint64_t i = n; i-- > 0;) if (buf[i] == (uint8_t)b) { r = a + i; break; }
        free(buf);
        break;
    case EMSAN_FN_STRCMP: case EMSAN_FN_STRNCMP: case EMSAN_FN_MEMCMP: {
        uint64_t used; int res;
        uint64_t max = fn == EMSAN_FN_STRCMP ? ~0ULL >> 1 : n;
        if (compare(h, a, b, max, fn != EMSAN_FN_MEMCMP, &used, &res)) return;
        uint64_t span = fn == EMSAN_FN_MEMCMP ? n : used;     /* memcmp may read all n bytes */
        if (!check_range(h, a, span, 0, fn)) check_range(h, b, span, 0, fn);
        r = (uint64_t)(int64_t)res;
        break;
    }
    case EMSAN_FN_STRCPY: case EMSAN_FN_STPCPY:
        if ((len = guest_strnlen(h, b, ~0ULL >> 1)) < 0) return;
        if (!check_range(h, b, (uint64_t)len + 1, 0, fn)) check_range(h, a, (uint64_t)len + 1, 1, fn);
        if (read_block(h, b, (uint64_t)len + 1, &buf)) return;
        gput(h, a, buf, (size_t)len + 1);
        free(buf);
        r = fn == EMSAN_FN_STPCPY ? a + (uint64_t)len : a;
        break;
    case EMSAN_FN_STRNCPY: case EMSAN_FN_STPNCPY:
        if ((len = guest_strnlen(h, b, n)) < 0) return;
        if (!check_range(h, b, (uint64_t)len < n ? (uint64_t)len + 1 : n, 0, fn)) check_range(h, a, n, 1, fn);
        buf = calloc(n ? n : 1, 1);
        if (len && gget(h, b, buf, (size_t)len)) { free(buf); return; }
        gput(h, a, buf, n);
        free(buf);
        r = fn == EMSAN_FN_STPNCPY ? a + (uint64_t)len : a;
        break;
    case EMSAN_FN_STRCAT: case EMSAN_FN_STRNCAT:
        if ((len = guest_strnlen(h, a, ~0ULL >> 1)) < 0) return;
        if ((len2 = guest_strnlen(h, b, fn == EMSAN_FN_STRCAT ? ~0ULL >> 1 : n)) < 0) return;
        if (!check_range(h, a, (uint64_t)len + 1, 0, fn) &&
            !check_range(h, b, fn == EMSAN_FN_STRNCAT && (uint64_t)len2 >= n ? n : (uint64_t)len2 + 1, 0, fn))
            check_range(h, a + (uint64_t)len, (uint64_t)len2 + 1, 1, fn);
        buf = calloc((size_t)len2 + 1, 1);
        if (len2 && gget(h, b, buf, (size_t)len2)) { free(buf); return; }
        gput(h, a + (uint64_t)len, buf, (size_t)len2 + 1);
        free(buf);
        r = a;
        break;
    case EMSAN_FN_MEMCPY: case EMSAN_FN_MEMMOVE: case EMSAN_FN_MEMPCPY:
        /* As the kernel's checked memmove(): a bad range is reported and nothing is copied. */
        if (check_range(h, b, n, 0, fn) || check_range(h, a, n, 1, fn)) { r = 0; break; }
        if (read_block(h, b, n, &buf)) return;
        if (n) gput(h, a, buf, n);
        free(buf);
        r = fn == EMSAN_FN_MEMPCPY ? a + n : a;
        break;
    case EMSAN_FN_MEMSET:
        if (check_range(h, a, n, 1, fn)) { r = 0; break; }
        buf = malloc(n ? n : 1);
        memset(buf, (int)(b & 0xFF), n);
        if (n) gput(h, a, buf, n);
        free(buf);
        r = a;
        break;
    default:
        intercept_table_fn(h, fn);
        return;
    }
    h->stats.intercepted++;
    return_to_caller(h, r);
}
