/* Signals as a single-threaded program uses them.
 *
 * usage: os_signals handlers | abort | null-main | null-func | segv-unhandled-after-handler
 *   handlers  signal(), sigaction with SA_SIGINFO, raise(), blocking and unblocking with
 *             sigprocmask, a SIGSEGV handler that siglongjmps out, alarm() + pause(); exits 60
 *   abort     abort() after flushing a line: killed by SIGABRT (status 134)
 *   null-main a NULL-pointer write in main: killed by SIGSEGV (status 139)
 *   null-func the same write inside write_through_null(), a named function
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond) do { if (!(cond)) { failures++; printf("FAILED line %d: %s\n", __LINE__, #cond); } } while (0)

static volatile sig_atomic_t usr1_count, last_signo, last_code, last_pid_ok, alarm_seen;
static sigjmp_buf jump_back;
static volatile int segv_code;
static volatile int *volatile fault_addr_ok;

static void on_usr1(int sig)
{
    usr1_count++;
    last_signo = sig;
}

static void on_usr2_info(int sig, siginfo_t *info, void *uctx)
{
    last_signo = info->si_signo;
    last_code = info->si_code;
    last_pid_ok = info->si_pid == getpid();
    (void)sig;
    (void)uctx;
}

static void on_segv(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    segv_code = info->si_code;
    fault_addr_ok = (int *)info->si_addr;
    siglongjmp(jump_back, sig);
}

static void on_alarm(int sig)
{
    alarm_seen = sig;
}

static int handlers(void)
{
    /* signal() + raise(): the handler runs before raise returns */
    CHECK(signal(SIGUSR1, on_usr1) == SIG_DFL);
    CHECK(raise(SIGUSR1) == 0);
    CHECK(raise(SIGUSR1) == 0);
    printf("SIGUSR1 handled %d times, signo %d\n", (int)usr1_count, (int)last_signo);

    /* sigaction with SA_SIGINFO: siginfo says who sent it and how */
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr2_info;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR2, &sa, &old) == 0);
    CHECK(old.sa_handler == SIG_DFL);
    CHECK(kill(getpid(), SIGUSR2) == 0);
    printf("SIGUSR2 via kill: signo %d, si_code %d (SI_USER=%d), si_pid ok %d\n",
           (int)last_signo, (int)last_code, SI_USER, (int)last_pid_ok);
    CHECK(sigaction(SIGUSR2, NULL, &old) == 0 && old.sa_sigaction == on_usr2_info && (old.sa_flags & SA_SIGINFO));

    /* blocked signals stay pending and arrive at unblock */
    sigset_t block, prev, pend;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &block, &prev) == 0);
    CHECK(!sigismember(&prev, SIGUSR1));
    usr1_count = 0;
    CHECK(raise(SIGUSR1) == 0);
    CHECK(sigpending(&pend) == 0);
    printf("while blocked: handled %d, pending %d\n", (int)usr1_count, sigismember(&pend, SIGUSR1));
    CHECK(sigprocmask(SIG_SETMASK, &prev, NULL) == 0);
    printf("after unblock: handled %d\n", (int)usr1_count);
    CHECK(sigpending(&pend) == 0 && !sigismember(&pend, SIGUSR1));

    /* an ignored signal does nothing */
    CHECK(signal(SIGUSR1, SIG_IGN) == on_usr1);
    CHECK(raise(SIGUSR1) == 0);

    /* SIGSEGV handler that siglongjmps out of the fault, twice (the mask is restored) */
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0);
    for (int round = 0; round < 2; round++) {
        int got = sigsetjmp(jump_back, 1);
        if (got == 0) {
            *(volatile int *)16 = 1;
            printf("not reached\n");
        } else {
            printf("round %d: back from SIGSEGV (%d), si_code %d (SEGV_MAPERR=%d), si_addr 16: %d\n", round,
                   got, segv_code, SEGV_MAPERR, fault_addr_ok == (int *)16);
        }
    }
    signal(SIGSEGV, SIG_DFL);

    /* alarm() + pause(): pause returns -1/EINTR after the handler ran */
    CHECK(signal(SIGALRM, on_alarm) == SIG_DFL);
    CHECK(alarm(1) == 0);
    int r = pause();
    printf("pause returned %d, alarm handler saw signal %d\n", r, (int)alarm_seen);
    CHECK(alarm(0) == 0);

    printf("failures=%d\n", failures);
    return 60 + failures;
}

__attribute__((noinline)) void write_through_null(volatile int *p, int v)
{
    *p = v;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(what, "handlers") == 0)
        return handlers();
    if (strcmp(what, "abort") == 0) {
        printf("about to abort\n");
        abort();
    }
    if (strcmp(what, "null-main") == 0) {
        printf("about to write through NULL in main\n");
        *(volatile int *)(argc - 2) = 42;
        return 0;
    }
    if (strcmp(what, "null-func") == 0) {
        printf("about to write through NULL in a function\n");
        write_through_null((volatile int *)0, 42);
        return 0;
    }
    fprintf(stderr, "usage: os_signals handlers|abort|null-main|null-func\n");
    return 2;
}
