/* --stack-checks full on an unmodified -g binary: local variables overrun through libc and
 * system calls, named from DWARF. Run as `stack_dwarf CASE`: each bug case prints the address of
 * the variable it overruns ("obj 0x...") before the call, then makes the call marked @CASE;
 * "correct" does the tricky in-bounds things (struct copies, arrays of structs, alloca, VLAs,
 * values in registers, inlined functions, recursion, a signal handler's frame, callbacks from
 * libc, by-value struct parameters, setjmp/longjmp) and must report nothing. */
#include <alloca.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

static const char *volatile text = "overflowing!";          /* 12 characters + NUL */
static const char *volatile long_text =
    "a string far longer than the array and whatever the frame keeps above it: 95 bytes long........";
static volatile size_t extra = 1;                           /* sizes the compiler cannot fold */
static volatile char sink;

static void show(const void *p) { printf("obj %p\n", p); fflush(stdout); }

NOINLINE void over_memcpy(void)
{
    char dest[12];
    show(dest);
    memcpy(dest, text, sizeof dest + extra);                /* @over_memcpy */
    ESCAPE(dest);
    sink = dest[0];
}

NOINLINE void over_strcpy(void)
{
    char name[8];
    show(name);
    strcpy(name, text);                                     /* @over_strcpy */
    ESCAPE(name);
    sink = name[0];
}

NOINLINE void over_memset(void)
{
    int vals[4];
    show(vals);
    memset(vals, 0, sizeof vals + 4 * extra);               /* @over_memset */
    ESCAPE(vals);
    sink = (char)vals[0];
}

NOINLINE void over_read(void)
{
    char line[6];
    int fd[2];
    if (pipe(fd) || write(fd[1], "0123456789", 10) != 10)
        return;
    show(line);
    ssize_t n = read(fd[0], line, 10);                      /* @over_read */
    ESCAPE(line);
    sink = (char)n;
}

NOINLINE void over_strncat(void)
{
    char path[16] = "/usr/lib/";
    show(path);
    strncat(path, text, 10);                                /* @over_strncat */
    ESCAPE(path);
    sink = path[0];
}

static inline __attribute__((always_inline)) void copy_name(const char *s)
{
    char tmp[5];
    show(tmp);
    strcpy(tmp, s);                                         /* @over_inlined */
    ESCAPE(tmp);
    sink = tmp[0];
}

NOINLINE void over_inlined(void)
{
    copy_name(text + 6);                                    /* "owing!": 7 bytes into 5 */
}

NOINLINE void under_memcpy(void)
{
    struct { long before; char buf[16]; long after; } s = {1, "x", 2};
    show(&s);
    ESCAPE(&s);
    memcpy(s.buf - 12 * extra, text, 13 * extra);           /* @under_memcpy: from 4 bytes below s */
    ESCAPE(&s);
    sink = s.buf[0];
}

NOINLINE void smash(void)
{
    char dest[8];
    show(dest);
    strcpy(dest, long_text);                                /* @smash */
    ESCAPE(dest);
    sink = dest[0];
}

/* --- correct programs ----------------------------------------------------------------------- */
struct rec { int id; char tag[12]; double w; };

NOINLINE static void take_struct(struct rec r, struct rec *out)
{
    memcpy(&r, out, sizeof r);                              /* the by-value parameter, whole */
    memcpy(out, &r, sizeof r);
}

NOINLINE static int cmp(const void *a, const void *b)
{
    struct rec x, y;
    memcpy(&x, a, sizeof x);
    memcpy(&y, b, sizeof y);
    return x.id - y.id;
}

static inline __attribute__((always_inline)) int inl_sum(const char *s)
{
    char local[24];
    strncpy(local, s, sizeof local - 1);
    local[sizeof local - 1] = 0;
    return (int)strlen(local);
}

NOINLINE static int recurse(int depth)
{
    char buf[32];
    snprintf(buf, sizeof buf, "depth %d", depth);
    return depth ? recurse(depth - 1) + (int)strlen(buf) : (int)strlen(buf);
}

NOINLINE static void vla(int n)
{
    char v[n];
    memset(v, 'v', (size_t)n);
    v[n - 1] = 0;
    sink = (char)strlen(v);
}

static volatile int handled;

static void handler(int sig)
{
    char msg[40];
    memcpy(msg, "signal handler frame, no call", 30);
    snprintf(msg + 29, sizeof msg - 29, " %d", sig);
    handled = (int)strlen(msg);
}

static jmp_buf env;

NOINLINE static void jump(void)
{
    char junk[64];
    memset(junk, 1, sizeof junk);
    ESCAPE(junk);
    longjmp(env, 1);
}

NOINLINE void correct(void)
{
    struct rec a = {1, "alpha", 1.5}, b;
    memcpy(&b, &a, sizeof b);                               /* a struct copy */
    struct rec arr[5], copy[5];
    for (int i = 0; i < 5; i++) {
        arr[i].id = 5 - i;
        snprintf(arr[i].tag, sizeof arr[i].tag, "tag-%d", i);
        arr[i].w = i;
    }
    memcpy(copy, arr, sizeof copy);                         /* an array of structs */
    memcpy(&copy[2], &arr[4], sizeof copy[2]);              /* one element of it */
    memset(copy[1].tag, 0, sizeof copy[1].tag);             /* a member */
    memcpy(&a, &copy[3].id, sizeof a);                      /* a member's address, the whole struct */
    qsort(arr, 5, sizeof arr[0], cmp);                      /* libc calling back into a frame */
    take_struct(a, &b);
    char *al = alloca(64 + extra);                          /* alloca */
    memset(al, 'a', 64);
    al[63] = 0;
    strcpy(al, arr[0].tag);
    vla(48);                                                /* a VLA */
    int total = 0;
    for (int i = 0; i < 3; i++)
        total += inl_sum(arr[i].tag);                       /* inlined locals */
    total += recurse(20);
    union { char c[16]; long l[2]; } u;
    memset(&u, 0, sizeof u);
    memcpy(u.c, "union", 6);
    signal(SIGALRM, handler);
    raise(SIGALRM);
    if (!setjmp(env))
        jump();
    char line[16];
    int fd[2];
    if (pipe(fd) == 0 && write(fd[1], "piped\n", 6) == 6) {
        ssize_t n = read(fd[0], line, sizeof line - 1);
        line[n > 0 ? n : 0] = 0;
    }
    printf("%d %s %s %s %d %d %s", arr[0].id, b.tag, al, u.c, total, handled, line);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    const char *c = argv[1];
    if (!strcmp(c, "over_memcpy")) over_memcpy();
    else if (!strcmp(c, "over_strcpy")) over_strcpy();
    else if (!strcmp(c, "over_memset")) over_memset();
    else if (!strcmp(c, "over_read")) over_read();
    else if (!strcmp(c, "over_strncat")) over_strncat();
    else if (!strcmp(c, "over_inlined")) over_inlined();
    else if (!strcmp(c, "under_memcpy")) under_memcpy();
    else if (!strcmp(c, "smash")) smash();
    else if (!strcmp(c, "correct")) correct();
    else return 2;
    return 0;
}
