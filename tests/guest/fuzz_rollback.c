/* A persistent-mode target whose state lives in objects allocated before the fork point
 * (`--entry serve --persistent handle`): setup() allocates a configuration and a large buffer,
 * serve() is where the fork server starts, and handle(buf, len) runs once per input. Each
 * input byte is a command:
 *   R  replace the configuration: free setup()'s object, allocate another
 *   L  replace the large buffer the same way (a large object: pages of its own)
 *   U  use the configuration and the buffer
 *   X  allocate an object and keep it (never freed in this input)
 *   B  a real bug: read an object after freeing it
 * Memory goes back to the fork point's after every input, so each input starts with setup()'s
 * objects again: an R or L in one input must not make the U of the next one a use-after-free,
 * nor a second R a double free. Native runs take one input on stdin. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct config {
    int level;
    char name[20];
};

static struct config *config;
static char *big;
static void *kept[64];
static int nkept;

__attribute__((noinline)) void setup(void)
{
    config = malloc(sizeof *config);
    config->level = 1;
    strcpy(config->name, "default");
    big = malloc(20000);
    memset(big, 1, 20000);
}

__attribute__((noinline)) int handle(const unsigned char *buf, size_t len)
{
    int sum = 0;
    for (size_t i = 0; i < len; i++) {
        switch (buf[i]) {
        case 'R':
            free(config);
            config = malloc(sizeof *config);
            config->level = 2;
            break;
        case 'L':
            free(big);
            big = malloc(20000);
            big[0] = 2;
            break;
        case 'U':
            sum += config->level + big[19999];     /* @use */
            break;
        case 'X':
            if (nkept < 64)
                kept[nkept++] = malloc(24);
            break;
        case 'B': {
            volatile char *p = malloc(16);
            p[0] = 7;
            free((void *)p);
            sum += p[0];                           /* @bug */
            break;
        }
        }
    }
    return sum;
}

__attribute__((noinline)) int serve(void)
{
    unsigned char data[256];
    ssize_t n = read(0, data, sizeof data);
    return handle(data, n > 0 ? (size_t)n : 0);
}

int main(void)
{
    setup();
    return serve() & 1;
}
