/* Many differently tagged objects on one page: 256 objects of 48 bytes (kmalloc-64, 64 per
 * page), each read ROUNDS times, either object by object ("blocked": one pointer tag at a time
 * per page) or round-robin across all of them ("interleaved": every access through another tag
 * of the same page). Both orders make the same accesses; only the TLB sees a difference when
 * the tag sits in the address the emulator translates. Usage: tagpage blocked|interleaved [ROUNDS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 256

int main(int argc, char **argv)
{
    int interleaved = argc > 1 && strcmp(argv[1], "interleaved") == 0;
    long rounds = argc > 2 ? atol(argv[2]) : 1000;
    long *obj[N];
    for (int i = 0; i < N; i++) { obj[i] = malloc(48); for (int k = 0; k < 6; k++) obj[i][k] = i + k; }
    long sum = 0;
    if (interleaved) {
        for (long r = 0; r < rounds; r++)
            for (int i = 0; i < N; i++) sum += obj[i][r % 6];
    } else {
        for (int i = 0; i < N; i++)
            for (long r = 0; r < rounds; r++) sum += obj[i][r % 6];
    }
    for (int i = 0; i < N; i++) free(obj[i]);
    printf("%ld\n", sum);
    return 0;
}
