/* Top-Byte-Ignore: loads, stores and system calls through pointers with a tag in the top
 * byte work on arm64 Linux (the tagged-address ABI), whatever emsan's mode. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *tagged(void *p, unsigned tag)
{
    void *r = (void *)(((uintptr_t)p & ~(0xFFUL << 56)) | ((uintptr_t)tag << 56));
    __asm__ volatile("" : "+r"(r));
    return r;
}

int main(void)
{
    char *heap = malloc(64);
    char stack[32];
    volatile char *h = tagged(heap, 0x5a), *s = tagged(stack, 0xa5);
    for (int i = 0; i < 16; i++) { h[i] = (char)('a' + i); s[i] = (char)('A' + i); }   /* @first_store */
    h[16] = '\n'; s[16] = '\n';
    if (heap[3] != 'd' || stack[3] != 'D') return 3;
    if (write(1, (const void *)h, 17) != 17 || write(1, (const void *)s, 17) != 17) return 4;
    free(heap);
    return 0;
}
