/* Threads under emsan (tests/test_threads.py). Each case prints what does not depend on the
 * interleaving, so its output is the same natively and under emsan, on both architectures.
 *   work      8 threads: a mutex-protected counter, a condition variable (a ticket queue the
 *             threads pass in order), __thread data, joins and return values, gettid
 *   uaf       a worker thread allocates, a second frees, a third reads: use-after-free
 *   deadlock  two threads take two mutexes in opposite orders (each waits for the other)
 *   race      threads append to one buffer with no lock: the order shows the interleaving (the
 *             same in every emsan run with the same --threads-slice; not compared with native)
 *   robust    a robust mutex whose owner thread exited (EOWNERDEAD), and sigwait in a thread for
 *             a signal every thread blocks, sent to the process
 *   signals   a timer signal reaching the one thread that takes it while that thread computes,
 *             a thread-directed signal (pthread_kill) handled in the thread it was sent to,
 *             per-thread masks, a timed condition wait that times out, a sleeping thread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 8
#define ROUNDS 2000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn_cv = PTHREAD_COND_INITIALIZER;
static long counter;
static int turn;                      /* which thread may append to the log next */
static char log_buf[256];
static __thread int mine = 100;       /* each thread's own copy */
static __thread char tls_name[16];

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    mine += id;
    snprintf(tls_name, sizeof tls_name, "w%d", id);
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        counter++;
        pthread_mutex_unlock(&lock);
        if (i % 500 == 0)
            sched_yield();
    }
    /* the ticket queue: thread id appends only after thread id-1 did */
    pthread_mutex_lock(&lock);
    while (turn != id)
        pthread_cond_wait(&turn_cv, &lock);
    size_t n = strlen(log_buf);
    snprintf(log_buf + n, sizeof log_buf - n, "%s:%d ", tls_name, mine);
    turn++;
    pthread_cond_broadcast(&turn_cv);
    pthread_mutex_unlock(&lock);
    long tid = syscall(SYS_gettid);
    return (void *)(intptr_t)(tid != getpid() ? id * 10 : -1);
}

static int case_work(void)
{
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i)) {
            puts("pthread_create failed");
            return 1;
        }
    long sum = 0;
    for (int i = 0; i < NTHREADS; i++) {
        void *ret;
        pthread_join(t[i], &ret);
        sum += (intptr_t)ret;
    }
    printf("counter %ld (expected %d)\n", counter, NTHREADS * ROUNDS);
    printf("log %s\n", log_buf);
    printf("joined, return values sum %ld\n", sum);
    printf("main's own tls %d\n", mine);
    return 0;
}

/* --- uaf ----------------------------------------------------------------------------------- */
static char *shared;

static void *allocator_thread(void *arg)
{
    (void)arg;
    shared = malloc(48);
    memset(shared, 'a', 48);
    printf("allocated by %ld\n", (long)syscall(SYS_gettid));
    return NULL;
}

static void *freer_thread(void *arg)
{
    (void)arg;
    free(shared);
    printf("freed by %ld\n", (long)syscall(SYS_gettid));
    return NULL;
}

static void *reader_thread(void *arg)
{
    (void)arg;
    printf("read by %ld\n", (long)syscall(SYS_gettid));
    printf("read %d\n", ((volatile char *)shared)[8]);
    return NULL;
}

static int case_uaf(void)
{
    pthread_t a, f, r;
    printf("main %ld\n", (long)syscall(SYS_gettid));
    pthread_create(&a, NULL, allocator_thread, NULL);
    pthread_join(a, NULL);
    pthread_create(&f, NULL, freer_thread, NULL);
    pthread_join(f, NULL);
    pthread_create(&r, NULL, reader_thread, NULL);
    pthread_join(r, NULL);
    return 0;
}

/* --- deadlock -------------------------------------------------------------------------------- */
static pthread_mutex_t m1 = PTHREAD_MUTEX_INITIALIZER, m2 = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t both;

static void *take_21(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&m2);
    pthread_barrier_wait(&both);
    pthread_mutex_lock(&m1);
    return NULL;
}

static int case_deadlock(void)
{
    pthread_t t;
    pthread_barrier_init(&both, NULL, 2);
    pthread_create(&t, NULL, take_21, NULL);
    pthread_mutex_lock(&m1);
    pthread_barrier_wait(&both);
    puts("both hold one lock");
    fflush(stdout);
    pthread_mutex_lock(&m2);
    pthread_join(t, NULL);
    puts("never");
    return 0;
}

/* --- signals --------------------------------------------------------------------------------- */
static volatile int handled_here, handled_elsewhere;
static pthread_t target;
static pthread_barrier_t ready;

static void on_usr1(int sig)
{
    (void)sig;
    if (pthread_equal(pthread_self(), target))
        handled_here++;
    else
        handled_elsewhere++;
}

static void *target_thread(void *arg)
{
    sigset_t *usr1 = arg;
    pthread_sigmask(SIG_UNBLOCK, usr1, NULL);         /* only this thread takes SIGUSR1 */
    pthread_barrier_wait(&ready);
    while (handled_here < 2)
        usleep(1000);
    return NULL;
}

static volatile int alarm_here, alarm_elsewhere;
static pthread_t computer;

static void on_alarm(int sig)
{
    (void)sig;
    if (pthread_equal(pthread_self(), computer))
        alarm_here++;
    else
        alarm_elsewhere++;
}

static void *compute_until_alarm(void *arg)
{
    sigset_t *alrm = arg;
    pthread_sigmask(SIG_UNBLOCK, alrm, NULL);
    volatile unsigned long x = 1;
    while (!alarm_here && !alarm_elsewhere)             /* no system call: only a timer stops it */
        x = x * 2862933555777941757UL + 3037000493UL;
    return NULL;
}

static int case_signals(void)
{
    /* a timer's signal reaches the one thread that takes it while it computes */
    signal(SIGALRM, on_alarm);
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, NULL);
    pthread_create(&computer, NULL, compute_until_alarm, &alrm);
    struct itimerval it = {{0, 0}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    pthread_join(computer, NULL);
    printf("SIGALRM: %d handled in the computing thread, %d elsewhere\n", alarm_here, alarm_elsewhere);
    pthread_sigmask(SIG_UNBLOCK, &alrm, NULL);

    signal(SIGUSR1, on_usr1);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);          /* main blocks it; the thread inherits that */
    pthread_barrier_init(&ready, NULL, 2);
    pthread_create(&target, NULL, target_thread, &usr1);
    pthread_barrier_wait(&ready);
    kill(getpid(), SIGUSR1);                          /* to the process: the one thread that takes it */
    while (handled_here < 1)
        usleep(1000);
    pthread_kill(target, SIGUSR1);                    /* to the thread */
    pthread_join(target, NULL);
    printf("SIGUSR1: %d handled in the thread that unblocked it, %d elsewhere\n", handled_here, handled_elsewhere);

    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 20 * 1000 * 1000;
    if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
    pthread_mutex_lock(&m);
    int r = pthread_cond_timedwait(&c, &m, &until);
    pthread_mutex_unlock(&m);
    printf("timed wait: %s\n", r == ETIMEDOUT ? "ETIMEDOUT" : strerror(r));
    return 0;
}

/* --- race ------------------------------------------------------------------------------------ */
static char order[3 * 4000 + 1];
static volatile int pos;

static void *appender(void *arg)
{
    char c = (char)(intptr_t)arg;
    for (int i = 0; i < 4000; i++) {
        order[pos] = c;
        pos = pos + 1;
        for (volatile int j = 0; j < 20; j++)
            ;
    }
    return NULL;
}

static int case_race(void)
{
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, appender, (void *)(intptr_t)('a' + i));
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    unsigned long h = 5381, switches = 0;
    for (int i = 0; i < pos; i++) {
        h = h * 33 + (unsigned char)order[i];
        switches += i && order[i] != order[i - 1];
    }
    printf("%d appends, %lu switches, order hash %lx\n", pos, switches, h);
    return 0;
}

/* --- robust ---------------------------------------------------------------------------------- */
static pthread_mutex_t robust_m;

static void *robust_holder(void *arg) { pthread_mutex_lock(&robust_m); return arg; }

static void *sigwaiter(void *arg)
{
    sigset_t *usr2 = arg;
    int sig = 0;
    sigwait(usr2, &sig);
    printf("sigwait in the thread got %s\n", sig == SIGUSR2 ? "SIGUSR2" : "another signal");
    return NULL;
}

static int case_robust(void)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&robust_m, &attr);
    pthread_t t;
    pthread_create(&t, NULL, robust_holder, NULL);
    pthread_join(t, NULL);
    int r = pthread_mutex_lock(&robust_m);
    printf("lock of a dead owner's robust mutex: %s\n", r == EOWNERDEAD ? "EOWNERDEAD" : strerror(r));
    pthread_mutex_consistent(&robust_m);
    pthread_mutex_unlock(&robust_m);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, NULL);
    pthread_create(&t, NULL, sigwaiter, &usr2);
    kill(getpid(), SIGUSR2);
    pthread_join(t, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *c = argc > 1 ? argv[1] : "work";
    if (!strcmp(c, "work")) return case_work();
    if (!strcmp(c, "uaf")) return case_uaf();
    if (!strcmp(c, "deadlock")) return case_deadlock();
    if (!strcmp(c, "signals")) return case_signals();
    if (!strcmp(c, "race")) return case_race();
    if (!strcmp(c, "robust")) return case_robust();
    fprintf(stderr, "unknown case %s\n", c);
    return 2;
}
