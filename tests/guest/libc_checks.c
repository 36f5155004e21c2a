/* Bad ranges passed to C library functions whose own code runs: the number parsers, the printf
 * family's strings and output buffers, sscanf's input, the streams' buffers, _FORTIFY_SOURCE's
 * checked reads. Each case is a function of its own; a comment marker `@name` names the line a
 * report must point at. Built plain and with -D_FORTIFY_SOURCE=2 (then the compiler calls
 * __sprintf_chk, __read_chk... where it knows the destination's size). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
static char *volatile keep;
static volatile long sink;
static volatile size_t twelve = 12, sixteen = 16;
static const char *volatile abc = "abc", *volatile thirteen = "0123456789abc";

/* size bytes of text, no terminator */
static NOINLINE char *unterminated(const char *text, size_t size)
{
    char *p = malloc(size);
    memcpy(p, text, size);
    keep = p;
    return p;
}

NOINLINE void via_atoi(void)
{
    char *p = unterminated("123", 3);
    sink = atoi(p);  /* @atoi */
}
NOINLINE void via_strtol(void)
{
    char *p = unterminated("0x1f", 4), *end;
    sink = strtol(p, &end, 16);  /* @strtol */
}
NOINLINE void via_strtoull(void)
{
    char *p = unterminated(" +77", 4), *end;
    sink = (long)strtoull(p, &end, 0);  /* @strtoull */
}
NOINLINE void via_strtod(void)
{
    char *p = unterminated("1.5e3", 5), *end;
    sink = (long)strtod(p, &end);  /* @strtod */
}
NOINLINE void via_strtol_endptr(void)
{
    char **end = malloc(4);
    keep = (char *)end;
    sink = strtol("42", end, 10);  /* @strtol_endptr */
}
NOINLINE void via_printf_s(void)
{
    char *s = unterminated("hello", 5);
    printf("[%s]\n", s);  /* @printf_s */
}
NOINLINE void via_puts(void)
{
    char *s = unterminated("hello", 5);
    printf("%s\n", s);  /* @puts */
}
NOINLINE void via_fprintf_s(void)
{
    char *s = unterminated("hello", 5);
    fprintf(stdout, "%d %.9s!\n", 7, s);  /* @fprintf_s */
}
NOINLINE void via_sprintf(void)
{
    char *d = malloc(8);
    keep = d;
    sprintf(d, "%d-%s", 12345, abc);  /* @sprintf */
}
NOINLINE void via_sprintf_double(void)
{
    char *d = malloc(4);
    keep = d;
    sprintf(d, "%.3f", 3.14159);  /* @sprintf_double */
}
NOINLINE void via_snprintf(void)
{
    char *d = malloc(8);
    keep = d;
    snprintf(d, sixteen, "%s", thirteen);  /* @snprintf */
}
/* An output that depends on the locale (the ' flag groups digits in some): judged by its result */
NOINLINE void via_sprintf_locale(void)
{
    char *d = malloc(4);
    keep = d;
    sprintf(d, "%'d", 1234567);  /* @sprintf_locale */
}
static NOINLINE void format_into(char *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsprintf(d, fmt, ap);  /* @vsprintf */
    va_end(ap);
}
NOINLINE void via_vsprintf(void)
{
    char *d = malloc(6);
    keep = d;
    format_into(d, "%s:%x:%c", abc, 0xbeef, 'z');
}
NOINLINE void via_sscanf(void)
{
    char *in = unterminated("1234", 4);
    int v = 0;
    sink = sscanf(in, "%d", &v);  /* @sscanf */
    sink += v;
}
NOINLINE void via_fwrite(void)
{
    char *b = unterminated("abcdefgh", 8);
    fwrite(b, 1, twelve, stdout);  /* @fwrite */
}
NOINLINE void via_fputs(void)
{
    char *s = unterminated("hello", 5);
    fputs(s, stdout);  /* @fputs */
}
NOINLINE void via_read_chk(void)
{
    char *b = malloc(8);
    keep = b;
    sink = read(0, b, sixteen);  /* @read_chk */
}
NOINLINE void via_fread_chk(void)
{
    char *b = malloc(8);
    keep = b;
    sink = (long)fread(b, 1, sixteen, stdin);  /* @fread_chk */
}
/* scanf's conversions: what they stored, by the result */
NOINLINE void via_sscanf_s(void)
{
    char *w = malloc(4);
    keep = w;
    sink = sscanf("overflowing", "%s", w);  /* @sscanf_s */
}
NOINLINE void via_sscanf_width(void)
{
    char *w = malloc(4);
    keep = w;
    sink = sscanf("abcdefgh", "%6s", w);  /* @sscanf_width */
}
NOINLINE void via_sscanf_c(void)
{
    char *w = malloc(4);
    keep = w;
    sink = sscanf("abcdefgh", "%6c", w);  /* @sscanf_c */
}
NOINLINE void via_sscanf_int(void)
{
    short *h = malloc(2);
    keep = (char *)h;
    sink = sscanf("12", "%d", (int *)h);  /* @sscanf_int */
}
static NOINLINE int scan_from(const char *in, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsscanf(in, fmt, ap);  /* @vsscanf */
    va_end(ap);
    return n;
}
NOINLINE void via_vsscanf(void)
{
    char *w = malloc(2);
    int v = 0;
    keep = w;
    sink = scan_from("xyz12345", "%[a-z]%d", w, &v);
}

/* Reads whose overflow depends on the data: judged when the call returns. */
NOINLINE void via_fgets(void)
{
    char *b = malloc(8);
    keep = b;
    keep = fgets(b, 32, stdin);  /* @fgets */
}
NOINLINE void via_fread(void)
{
    char *b = malloc(8);
    keep = b;
    sink = (long)fread(b, 1, twelve, stdin);  /* @fread */
}
/* The same call site, first with a buffer that fits (its return translated before any hook there),
 * then with one that does not */
NOINLINE void via_fgets_late(void)
{
    char *big = malloc(32), *small = malloc(8);
    keep = big;
    keep = small;
    for (int i = 0; i < 2; i++)
        if (!fgets(i ? small : big, 32, stdin))  /* @fgets_late */
            break;
}
/* The same buffer and bound, lines that fit: no report. */
NOINLINE void fgets_short(void)
{
    char *b = malloc(8);
    while (fgets(b, 32, stdin))
        printf("line: %s", b);
    printf("fgets_short: done\n");
    free(b);
}

/* The same calls made correctly: no report, the native output. */
NOINLINE void correct(void)
{
    char *d = malloc(64), *end;
    long total = atoi("123") + atol(" -4") + atoll("+5x");
    total += strtol("0x1f", &end, 0) + (long)strtoul("777", &end, 8) + strtoll("  -12z", &end, 10);
    total += (long)(strtod("2.5e1", &end) + strtof("1.25", &end) + (double)strtold("-0x1p4", &end));
    printf("numbers: %ld\n", total);
    printf("[%s] [%.2s] [%5s] [%-4s|] %d %u %x %o %c %p %%\n", "abc", "xyz", "r", "l", -3, 7u, 255, 8, 'q', (void *)0);
    printf("%s\n", "via puts");
    fprintf(stdout, "%s=%lld %.3f %e %g %a\n", "v", -123456789012LL, 3.14159, 1e100, 0.5, 1.0);
    int n = sprintf(d, "%d-%s-%08.3f-%+d-%#x-%ld", 12345, "abc", -2.5, 4, 0x1f, 1L << 40);
    printf("sprintf: %s (%d)\n", d, n);
    n = snprintf(d, 8, "%s", "0123456789abc");
    printf("snprintf: %s (%d)\n", d, n);
    format_into(d, "%s:%x:%c:%*d:%.*s", "abc", 0xbeef, 'z', 6, 42, 2, "xyz");
    printf("vsprintf: %s\n", d);
    n = snprintf(d, 64, "%1$s %2$d %1$s %3$5.1f", "pos", 9, 2.25);
    printf("positional: %s (%d)\n", d, n);
    int a = 0, b = 0;
    char word[8];
    n = sscanf("17 42 seven", "%d %d %7s", &a, &b, word);
    printf("sscanf: %d %d %d %s\n", n, a, b, word);
    char *w = malloc(4);
    int at = 0;
    n = scan_from("ab12 rest", "%[a-z]%d %n", w, &a, &at);
    printf("vsscanf: %d %s %d %d\n", n, w, a, at);
    n = sscanf("wxyz", "%3c", w);
    printf("%%3c: %d %.3s\n", n, w);
    n = sscanf("", "%3s", w);
    printf("empty: %d\n", n);
    free(w);
    fwrite("fwrite\n", 1, 7, stdout);
    fputs("fputs\n", stdout);
    strcpy(d, "fixed text");
    printf("%s %n\n", d, &n);
    printf("%%n: %d\n", n);
    free(d);
    printf("correct: done\n");
}

int main(int argc, char **argv)
{
    static const struct { const char *name; void (*fn)(void); } cases[] = {
        {"atoi", via_atoi}, {"strtol", via_strtol}, {"strtoull", via_strtoull}, {"strtod", via_strtod},
        {"strtol_endptr", via_strtol_endptr}, {"printf_s", via_printf_s}, {"puts", via_puts},
        {"fprintf_s", via_fprintf_s}, {"sprintf", via_sprintf}, {"sprintf_double", via_sprintf_double},
        {"sprintf_locale", via_sprintf_locale},
        {"snprintf", via_snprintf}, {"vsprintf", via_vsprintf}, {"sscanf", via_sscanf}, {"fwrite", via_fwrite},
        {"fputs", via_fputs}, {"read_chk", via_read_chk}, {"fread_chk", via_fread_chk}, {"fgets", via_fgets}, {"sscanf_s", via_sscanf_s},
        {"sscanf_width", via_sscanf_width}, {"sscanf_c", via_sscanf_c}, {"sscanf_int", via_sscanf_int},
        {"vsscanf", via_vsscanf}, {"fread", via_fread},
        {"fgets_late", via_fgets_late}, {"fgets_short", fgets_short}, {"correct", correct},
    };
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; argc > 1 && i < sizeof cases / sizeof cases[0]; i++)
        if (!strcmp(argv[1], cases[i].name)) {
            cases[i].fn();
            return 0;
        }
    fprintf(stderr, "usage: libc_checks CASE\n");
    return 2;
}
