/* Compiler-assisted mode: stack and global overflows made inside libc (string functions, a
 * system call's buffer), which the guest's own instrumentation never sees: clang leaves
 * memcpy/strcpy... as libc calls. emsan's interceptors and system-call checks must read the
 * redzones the compiler poisoned. Run as `stack_libc CASE`; "correct" makes the same calls in
 * bounds and must report nothing. Each overflowing case writes (or reads) one byte past a
 * 10-byte array. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>

#define NOINLINE __attribute__((noinline))
/* The compiler must keep the call: the array escapes and its bytes are read afterwards. */
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

static char global_dst[10];
static const char *volatile long_src = "0123456789";        /* 10 characters + NUL: 11 bytes */
static volatile char sink;
static volatile size_t one = 1;        /* sizes the compiler cannot fold (nor turn into inline moves) */

NOINLINE void stack_memcpy(void)
{
    char dest[10];
    char src[16] = "abcdefghijklmno";
    memcpy(dest, src, sizeof dest + one);                       /* @stack_memcpy */
    ESCAPE(dest);
    sink = dest[0];
}

NOINLINE void stack_memmove(void)
{
    char dest[10];
    char src[16] = "abcdefghijklmno";
    memmove(dest, src, sizeof dest + one);                      /* @stack_memmove */
    ESCAPE(dest);
    sink = dest[0];
}

NOINLINE void stack_memset(void)
{
    char dest[10];
    memset(dest, 'x', sizeof dest + one);                       /* @stack_memset */
    ESCAPE(dest);
    sink = dest[0];
}

NOINLINE void stack_strcpy(void)
{
    char dest[10];
    strcpy(dest, long_src);                                   /* @stack_strcpy */
    ESCAPE(dest);
    sink = dest[0];
}

NOINLINE void stack_strcat(void)
{
    char dest[10] = "01234";
    strcat(dest, long_src + 5);                               /* @stack_strcat */
    ESCAPE(dest);
    sink = dest[0];
}

NOINLINE void stack_strncpy(void)
{
    char dest[10];
    strncpy(dest, long_src, sizeof dest + one);                 /* @stack_strncpy */
    ESCAPE(dest);
    sink = dest[0];
}

NOINLINE void stack_wcscpy(void)
{
    wchar_t dest[10];
    wcscpy(dest, L"0123456789");                              /* @stack_wcscpy */
    ESCAPE(dest);
    sink = (char)dest[0];
}

NOINLINE void stack_overread(void)
{
    char src[10];
    char dest[32];
    memset(src, 'a', sizeof src);                             /* no NUL inside src */
    memcpy(dest, src, sizeof src + one);                        /* @stack_overread */
    ESCAPE(dest);
    sink = dest[0];
}

NOINLINE void stack_read_syscall(void)
{
    char dest[10];
    int fd[2];
    if (pipe(fd)) return;
    if (write(fd[1], "0123456789ABCDEF", 16) != 16) return;
    ssize_t n = read(fd[0], dest, 16);                        /* @stack_read_syscall */
    sink = (char)n;
}

NOINLINE void global_memcpy(void)
{
    char src[16] = "abcdefghijklmno";
    memcpy(global_dst, src, sizeof global_dst + one);           /* @global_memcpy */
    ESCAPE(global_dst);
}

struct pair { int a; char name[12]; };

NOINLINE void correct(void)
{
    char dest[10], src[16] = "abcdefghijklmno";
    memcpy(dest, src, sizeof dest);
    memmove(dest + 1, dest, sizeof dest - 1);
    memset(dest, 0, sizeof dest);
    strcpy(dest, "012345678");
    strcat(dest + 5, "");
    strncpy(dest, long_src, sizeof dest - 1);
    dest[sizeof dest - 1] = 0;
    memcpy(global_dst, src, sizeof global_dst);
    struct pair ps[4], copy[4];
    for (int i = 0; i < 4; i++) {
        ps[i].a = i;
        snprintf(ps[i].name, sizeof ps[i].name, "pair-%d", i);
    }
    memcpy(copy, ps, sizeof copy);
    struct pair one = copy[3];
    int fd[2];
    char buf[16];
    if (pipe(fd) == 0 && write(fd[1], one.name, strlen(one.name) + 1) > 0 && read(fd[0], buf, sizeof buf) > 0)
        printf("%s %s %d\n", buf, dest, copy[2].a);
}

int main(int argc, char **argv)
{
    static const struct { const char *name; void (*fn)(void); } cases[] = {
        {"stack_memcpy", stack_memcpy}, {"stack_memmove", stack_memmove}, {"stack_memset", stack_memset},
        {"stack_strcpy", stack_strcpy}, {"stack_strcat", stack_strcat}, {"stack_strncpy", stack_strncpy},
        {"stack_wcscpy", stack_wcscpy}, {"stack_overread", stack_overread}, {"stack_read_syscall", stack_read_syscall},
        {"global_memcpy", global_memcpy}, {"correct", correct},
    };
    for (int a = 1; a < argc; a++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            if (!strcmp(argv[a], cases[i].name))
                cases[i].fn();
    return 0;
}
