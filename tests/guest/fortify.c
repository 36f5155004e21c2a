/* Overflows through _FORTIFY_SOURCE's checked string functions (built with -O1
 * -D_FORTIFY_SOURCE=2: the compiler passes the destination's size to __memcpy_chk,
 * __strcpy_chk...), each in a function of its own, and the same calls made correctly. Natively
 * glibc aborts each overflow ("buffer overflow detected"); emsan must report it first. A comment
 * marker `@name` names the line a report must point at. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#define NOINLINE __attribute__((noinline))
/* volatile: the compiler cannot see lengths or strings, so the checks happen at run time */
static volatile size_t eight = 8, twelve = 12;
static const char *volatile ten_chars = "0123456789", *volatile five_chars = "defgh", *volatile three_chars = "abc";
static char *volatile keep;

NOINLINE void via_memcpy_chk(void)
{
    char *d = malloc(8);
    memcpy(d, "0123456789abcdef", twelve);  /* @memcpy_chk */
    keep = d;
}
NOINLINE void via_memset_chk(void)
{
    char *d = malloc(8);
    memset(d, 'x', twelve);  /* @memset_chk */
    keep = d;
}
NOINLINE void via_strcpy_chk(void)
{
    char *d = malloc(8);
    strcpy(d, ten_chars);  /* @strcpy_chk */
    keep = d;
}
NOINLINE void via_strncpy_chk(void)
{
    char *d = malloc(8);
    strncpy(d, three_chars, twelve);  /* @strncpy_chk */
    keep = d;
}
NOINLINE void via_strcat_chk(void)
{
    char *d = malloc(8);
    strcpy(d, three_chars);
    strcat(d, five_chars);  /* @strcat_chk */
    keep = d;
}
/* The destination is large enough, the source is not: glibc's check passes, the copy reads
 * past the source's end. */
NOINLINE void via_memcpy_chk_source(void)
{
    char d[16], *s = malloc(4);
    memcpy(s, "abc", 4);
    memcpy(d, s, eight);  /* @memcpy_chk_source */
    keep = s;
    printf("%c\n", d[0]);
}
/* The wide-character twins (counts in wchar_t, 4 bytes) */
static volatile size_t six = 6;
static const wchar_t *volatile wten = L"0123456789", *volatile wseven = L"defghij", *volatile wthree = L"abc";
NOINLINE void via_wmemcpy_chk(void)
{
    wchar_t *d = malloc(4 * sizeof(wchar_t));
    wmemcpy(d, wten, six);  /* @wmemcpy_chk */
    keep = (char *)d;
}
NOINLINE void via_wcscpy_chk(void)
{
    wchar_t *d = malloc(4 * sizeof(wchar_t));
    wcscpy(d, wten);  /* @wcscpy_chk */
    keep = (char *)d;
}
NOINLINE void via_wcscat_chk(void)
{
    wchar_t *d = malloc(8 * sizeof(wchar_t));
    wcscpy(d, wthree);
    wcscat(d, wseven);  /* @wcscat_chk */
    keep = (char *)d;
}
/* Out of a member but inside the allocation: glibc's check fails (the member's size), the
 * shadow has nothing to say; the program aborts as natively, with no report. */
struct two { char a[4]; char b[12]; };
NOINLINE void via_member_overflow(void)
{
    struct two *t = malloc(sizeof *t);
    strcpy(t->a, ten_chars);
    keep = (char *)t;
}

NOINLINE void correct(void)
{
    char *d = malloc(16);
    memcpy(d, "0123456789abcdef", twelve);
    memset(d + 12, 'x', 4);
    printf("memcpy/memset: %.16s\n", d);
    strcpy(d, ten_chars);
    strcat(d, five_chars);
    printf("strcpy/strcat: %s\n", d);
    strncpy(d, three_chars, twelve);
    printf("strncpy: %s %d\n", d, d[11]);
    free(d);
    wchar_t *w = malloc(16 * sizeof(wchar_t));
    wmemcpy(w, wten, six);
    wmemset(w + 6, L'x', 2);
    w[8] = 0;
    printf("wmemcpy/wmemset: %ls\n", w);
    wcscpy(w, wthree);
    wcscat(w, wseven);
    wcsncat(w, wten, 3);
    printf("wcscpy/wcscat: %ls\n", w);
    free(w);
    printf("correct: done\n");
}

int main(int argc, char **argv)
{
    static const struct { const char *name; void (*fn)(void); } cases[] = {
        {"memcpy_chk", via_memcpy_chk}, {"memset_chk", via_memset_chk}, {"strcpy_chk", via_strcpy_chk},
        {"strncpy_chk", via_strncpy_chk}, {"strcat_chk", via_strcat_chk}, {"memcpy_chk_source", via_memcpy_chk_source},
        {"wmemcpy_chk", via_wmemcpy_chk}, {"wcscpy_chk", via_wcscpy_chk},
        {"wcscat_chk", via_wcscat_chk}, {"member_overflow", via_member_overflow}, {"correct", correct},
    };
    for (size_t i = 0; argc > 1 && i < sizeof cases / sizeof cases[0]; i++)
        if (!strcmp(argv[1], cases[i].name)) {
            cases[i].fn();
            return 0;
        }
    fprintf(stderr, "usage: fortify CASE\n");
    return 2;
}
