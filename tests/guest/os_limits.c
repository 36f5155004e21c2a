/* What emsan refuses or stops: runaway loops, sleeps, unsupported system calls; and a thread.
 *
 * usage: os_limits spin | sleep | enosys N | thread
 *   spin    loops forever in spin_forever()
 *   sleep   sleeps 30 s in nanosleep
 *   enosys  calls the kcmp system call N times, prints what it returned; exits 0
 *   thread  calls pthread_create, prints its result and joins the thread (which prints too)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long spins;

__attribute__((noinline)) void spin_forever(void)
{
    /* One line: wherever the instruction limit stops the loop, the PC is on the marked line. */
    for (;;) spins++;                               /* @spin */
}

static void *thread_body(void *arg)
{
    printf("thread ran\n");
    return arg;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "";
    if (strcmp(what, "spin") == 0) {
        spin_forever();
    } else if (strcmp(what, "sleep") == 0) {
        struct timespec ts = {30, 0};
        nanosleep(&ts, NULL);
        printf("slept\n");
    } else if (strcmp(what, "enosys") == 0) {
        int n = argc > 2 ? atoi(argv[2]) : 1, enosys = 0;
        for (int i = 0; i < n; i++) {
            errno = 0;
            long r = syscall(SYS_kcmp, getpid(), getpid(), 0, 0, 0);
            enosys += r == -1 && errno == ENOSYS;
        }
        printf("kcmp: %d of %d calls failed with ENOSYS\n", enosys, n);
    } else if (strcmp(what, "thread") == 0) {
        pthread_t t;
        int r = pthread_create(&t, NULL, thread_body, NULL);
        printf("pthread_create returned %s\n", r == 0 ? "0" : r == EAGAIN ? "EAGAIN" : "another error");
        if (r == 0)
            pthread_join(t, NULL);
    } else {
        fprintf(stderr, "usage: os_limits spin|sleep|enosys N|thread\n");
        return 2;
    }
    return 0;
}
