/* Read-ahead in code emsan does not intercept (tests/test_false_reports.py): dlopen() hands its
 * argument to ld.so's own strcmp, strchr and strlen (ld.so's private copies, with no symbols
 * when no debug file is installed). Their SSE2/ASIMD loops read whole vectors past the name's
 * NUL and past its heap object.
 *   terminated   names of 1..200 characters, each in an object of exactly its size + 1
 *   unterminated one 90-byte name with no NUL in its object (a real overflow in ld.so) */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static __attribute__((noinline)) void *open_name(const char *name)
{
    return dlopen(name, RTLD_NOW);                 /* @dlopen */
}

static char *name_of(int len, int terminated)
{
    static const char prefix[] = "/nonexistent/emsan-";
    char *s = malloc((size_t)len + (terminated ? 1 : 0));
    for (int i = 0; i < len; i++) s[i] = i < (int)sizeof prefix - 1 ? prefix[i] : (char)('a' + i % 26);
    if (terminated) s[len] = 0;
    return s;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "terminated") == 0) {
        int loaded = 0;
        for (int len = 1; len <= 200; len++) {
            char *s = name_of(len, 1);
            loaded += open_name(s) != NULL;
            free(s);
        }
        printf("loaded %d of 200\n", loaded);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "unterminated") == 0) {
        char *s = name_of(90, 0);
        printf("%s\n", open_name(s) ? "loaded" : "not found");
        return 0;
    }
    return 2;
}
