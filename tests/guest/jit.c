/* The ways a JIT makes code at run time, each checked by calling the code it wrote.
 *
 *   jit [ROUNDS]
 *
 * 1. rwx:      one RWX mapping, written, run, rewritten, run (the translation must follow);
 * 2. wx:       W^X: written while RW, mprotect RX, run; RW again, rewritten, RX, run;
 * 3. late-x:   written while RW (the TLB holds a write entry), mprotect RWX, run, rewritten, run;
 * 4. neighbour: two functions on one page, only one rewritten;
 * 5. recycle:  the code page unmapped and mapped again at the same address with new code.
 * Every line prints what the calls returned; the expected values are in the comments. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096
#define RW (PROT_READ | PROT_WRITE)
#define RX (PROT_READ | PROT_EXEC)
#define RWX (PROT_READ | PROT_WRITE | PROT_EXEC)

typedef int (*fn_t)(void);

/* A function returning v: `mov eax, v; ret` or `movz w0, #v; ret`. */
static void emit(uint8_t *p, int v)
{
#if defined(__x86_64__)
    p[0] = 0xb8;
    memcpy(p + 1, &v, 4);
    p[5] = 0xc3;
#elif defined(__aarch64__)
    uint32_t w[2] = {0x52800000u | (((uint32_t)v & 0xffff) << 5), 0xd65f03c0u};
    memcpy(p, w, sizeof w);
#else
#error "x86-64 or arm64 only"
#endif
    __builtin___clear_cache((char *)p, (char *)p + 16);
}

static int call(uint8_t *p)
{
    fn_t f;
    memcpy(&f, &p, sizeof f);
    return f();
}

static uint8_t *map(void *at, int prot)
{
    uint8_t *p = mmap(at, PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED : 0), -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

static void protect(uint8_t *p, int prot)
{
    if (mprotect(p, PAGE, prot)) {
        perror("mprotect");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 50;
    long sum;

    uint8_t *a = map(0, RWX);
    emit(a, 1);
    int r1 = call(a);
    emit(a, 2);
    printf("rwx %d %d\n", r1, call(a));                     /* 1 2 */
    sum = 0;
    for (int i = 0; i < rounds; i++) {
        emit(a, i);
        sum += call(a);
    }
    printf("rwx loop %ld\n", sum);                            /* rounds*(rounds-1)/2 */

    uint8_t *b = map(0, RW);
    emit(b, 3);
    protect(b, RX);
    r1 = call(b);
    protect(b, RW);
    emit(b, 4);
    protect(b, RX);
    printf("wx %d %d\n", r1, call(b));                      /* 3 4 */
    sum = 0;
    for (int i = 0; i < rounds; i++) {
        protect(b, RW);
        emit(b, 100 + i);
        protect(b, RX);
        sum += call(b);
    }
    printf("wx loop %ld\n", sum);                             /* 100*rounds + rounds*(rounds-1)/2 */

    uint8_t *c = map(0, RW);
    emit(c, 5);
    protect(c, RWX);
    r1 = call(c);
    emit(c, 6);
    printf("late-x %d %d\n", r1, call(c));                  /* 5 6 */

    emit(a, 7);
    emit(a + 64, 8);
    r1 = call(a) * 10 + call(a + 64);
    emit(a + 64, 9);
    printf("neighbour %d %d\n", r1, call(a) * 10 + call(a + 64));   /* 78 79 */

    munmap(b, PAGE);
    uint8_t *b2 = map(b, RW);
    emit(b2, 10);
    protect(b2, RX);
    printf("recycle %d %d\n", b2 == b, call(b2));            /* 1 10 */
    return 0;
}
