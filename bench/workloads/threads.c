/* Threads benchmark workload (bench/threads.py).
 *   pingpong N        two threads hand a turn back and forth N times through two semaphores
 *                     (futex waits and wakes): 2N context switches; prints N
 *   compute N MODE    N rounds of arithmetic, after (MODE "thread") making and joining one thread
 *                     (emsan's time-slice block hook counts while it lives), or (MODE "alone") not */
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sem_t ping, pong;
static long rounds;

static void *ponger(void *arg)
{
    (void)arg;
    for (long i = 0; i < rounds; i++) {
        sem_wait(&ping);
        sem_post(&pong);
    }
    return NULL;
}

static void *nothing(void *arg) { return arg; }

int main(int argc, char **argv)
{
    if (argc < 3) return 2;
    rounds = atol(argv[2]);
    if (!strcmp(argv[1], "pingpong")) {
        pthread_t t;
        sem_init(&ping, 0, 0);
        sem_init(&pong, 0, 0);
        pthread_create(&t, NULL, ponger, NULL);
        for (long i = 0; i < rounds; i++) {
            sem_post(&ping);
            sem_wait(&pong);
        }
        pthread_join(t, NULL);
        printf("%ld\n", rounds);
        return 0;
    }
    if (!strcmp(argv[1], "compute") && argc > 3) {
        if (!strcmp(argv[3], "thread")) {
            pthread_t t;
            pthread_create(&t, NULL, nothing, NULL);
            pthread_join(t, NULL);
        }
        volatile uint64_t x = 1;
        for (long i = 0; i < rounds; i++)
            for (int j = 0; j < 1000; j++)
                x = x * 6364136223846793005ULL + (x >> 17) + j;
        printf("%ld\n", rounds);
        return (int)(x & 0);
    }
    return 2;
}
