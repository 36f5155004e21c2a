/* Signals as a single-threaded program uses them.
 *
 * usage: os_signals handlers | abort | null-main | null-func | segv-unhandled-after-handler
 *   handlers  signal(), sigaction with SA_SIGINFO, raise(), blocking and unblocking with
 *             sigprocmask, a SIGSEGV handler that siglongjmps out, alarm() + pause(); exits 60
 *   abort     abort() after flushing a line: killed by SIGABRT (status 134)
 *   null-main a NULL-pointer write in main: killed by SIGSEGV (status 139)
 *   null-func the same write inside write_through_null(), a named function
 *   segv-blocked  the same with a SIGSEGV handler installed but SIGSEGV blocked: still killed
 *   sigpipe   a write to a pipe nobody reads: killed by SIGPIPE (status 141), quietly
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__x86_64__)
#define INVALID_INSN() __asm__ volatile("ud2")
#define INVALID_INSN_LEN 2
#define UC_PC(uc) ((uc)->uc_mcontext.gregs[REG_RIP])
#else
#define INVALID_INSN() __asm__ volatile(".inst 0x00000000")     /* udf #0 */
#define INVALID_INSN_LEN 4
#define UC_PC(uc) ((uc)->uc_mcontext.pc)
#endif

static int failures;

#define CHECK(cond) do { if (!(cond)) { failures++; printf("FAILED line %d: %s\n", __LINE__, #cond); } } while (0)

static volatile sig_atomic_t usr1_count, last_signo, last_code, last_pid_ok, alarm_seen;
static volatile sig_atomic_t raise_usr1_inside, usr1_seen_inside;
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
    if (raise_usr1_inside) {
        raise(SIGUSR1);                 /* in sa_mask: must wait until this handler returns */
        usr1_seen_inside = usr1_count;
    }
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

static volatile int ill_count, ill_addr_is_pc, ill_code;

static void on_ill(int sig, siginfo_t *info, void *uctx)
{
    ucontext_t *uc = uctx;
    (void)sig;
    ill_addr_is_pc = (uintptr_t)info->si_addr == (uintptr_t)UC_PC(uc);
    ill_code = info->si_code;
    UC_PC(uc) += INVALID_INSN_LEN;          /* resume after the instruction */
    ill_count++;
}

static void on_usr1_block_more(int sig, siginfo_t *info, void *uctx)
{
    ucontext_t *uc = uctx;
    (void)sig;
    (void)info;
    sigaddset(&uc->uc_sigmask, SIGUSR2);    /* the mask the program returns to */
}

static char altstack[64 * 1024];
static volatile int overflow_on_altstack;

static void on_overflow(int sig, siginfo_t *info, void *uctx)
{
    char here;
    (void)info;
    (void)uctx;
    overflow_on_altstack = &here >= altstack && &here < altstack + sizeof altstack;
    siglongjmp(jump_back, sig);
}

__attribute__((noinline)) int recurse(volatile int depth)
{
    volatile char pad[256];
    pad[0] = (char)depth;
    if (depth == 1 << 30)       /* never: the stack runs out long before */
        return 0;
    return recurse(depth + 1) + pad[0];
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
    CHECK(raise(SIGUSR2) == 0);
    printf("SIGUSR2 via raise: si_code %d (SI_TKILL=%d)\n", (int)last_code, SI_TKILL);

    /* sa_mask holds a signal raised inside the handler until the handler returns */
    sigaddset(&sa.sa_mask, SIGUSR1);
    CHECK(sigaction(SIGUSR2, &sa, NULL) == 0);
    usr1_count = 0;
    raise_usr1_inside = 1;
    CHECK(raise(SIGUSR2) == 0);
    raise_usr1_inside = 0;
    printf("SIGUSR1 inside the SIGUSR2 handler: seen there %d, after return %d\n", (int)usr1_seen_inside,
           (int)usr1_count);

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

    /* stack overflow: the handler can only run on an alternate stack */
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    CHECK(sigaltstack(&ss, NULL) == 0);
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_overflow;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0);
    if (sigsetjmp(jump_back, 1) == 0)
        recurse(0);
    printf("stack overflow caught on the alternate stack: %d\n", overflow_on_altstack);
    ss.ss_flags = SS_DISABLE;
    CHECK(sigaltstack(&ss, NULL) == 0);
    signal(SIGSEGV, SIG_DFL);

    /* a handler that edits its ucontext: skip an invalid instruction, extend the mask */
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_ill;
    sa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGILL, &sa, NULL) == 0);
    volatile int after = 0;
    INVALID_INSN();
    after = 1;
    INVALID_INSN();
    after += 1;
    printf("SIGILL skipped by the handler %d times, si_addr is the pc: %d, after=%d\n", ill_count,
           ill_addr_is_pc, after);
#if defined(__x86_64__)
    /* not on arm64: the kernel says ILL_ILLOPC there, the reference (qemu-user) ILL_ILLOPN */
    printf("SIGILL si_code %d (ILL_ILLOPN=%d)\n", ill_code, ILL_ILLOPN);
#endif
    sa.sa_sigaction = on_usr1_block_more;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    CHECK(raise(SIGUSR1) == 0);
    sigset_t now;
    CHECK(sigprocmask(SIG_BLOCK, NULL, &now) == 0);
    printf("mask after the handler edited uc_sigmask: SIGUSR2 blocked %d, SIGUSR1 blocked %d\n",
           sigismember(&now, SIGUSR2), sigismember(&now, SIGUSR1));
    sigemptyset(&now);
    CHECK(sigprocmask(SIG_SETMASK, &now, NULL) == 0);

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
    *p = v;                                         /* @null-func */
}

static volatile sig_atomic_t small_stack_handled;

static void on_usr1_small_stack(int sig)
{
    (void)sig;
    small_stack_handled = 1;
}

/* A handler on an alternate stack of exactly sysconf(_SC_MINSIGSTKSZ) bytes (AT_MINSIGSTKSZ when
 * the kernel gives it), with an inaccessible page right below: the signal frame fits. */
static int small_alternate_stack(void)
{
    long size = sysconf(_SC_MINSIGSTKSZ), page = sysconf(_SC_PAGESIZE);
    long span = (size + page - 1) / page * page;
    char *area = mmap(NULL, (size_t)(span + page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(area != MAP_FAILED && mprotect(area, (size_t)page, PROT_NONE) == 0);
    stack_t ss = {.ss_sp = area + page, .ss_size = (size_t)size, .ss_flags = 0};
    CHECK(sigaltstack(&ss, NULL) == 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1_small_stack;
    sa.sa_flags = SA_ONSTACK;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    CHECK(raise(SIGUSR1) == 0);
    printf("small alternate stack: handled %d, failures %d\n", (int)small_stack_handled, failures);
    return failures;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(what, "handlers") == 0)
        return handlers();
    if (strcmp(what, "minsigstksz") == 0)
        return small_alternate_stack();
    if (strcmp(what, "abort") == 0) {
        printf("about to abort\n");
        abort();
    }
    if (strcmp(what, "null-main") == 0) {
        printf("about to write through NULL in main\n");
        *(volatile int *)(intptr_t)(argc - 2) = 42;     /* @null-main */
        return 0;
    }
    if (strcmp(what, "null-func") == 0) {
        printf("about to write through NULL in a function\n");
        write_through_null((volatile int *)0, 42);
        return 0;
    }
    if (strcmp(what, "segv-blocked") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSEGV, &sa, NULL);
        sigset_t block;
        sigemptyset(&block);
        sigaddset(&block, SIGSEGV);
        sigprocmask(SIG_BLOCK, &block, NULL);
        printf("about to fault with SIGSEGV blocked\n");
        write_through_null((volatile int *)0, 42);
        return 0;
    }
    if (strcmp(what, "sigpipe") == 0) {
        int p[2];
        if (pipe(p) != 0)
            return 3;
        close(p[0]);
        printf("about to write to a pipe without readers\n");
        write(p[1], "x", 1);
        printf("not reached\n");
        return 0;
    }
    fprintf(stderr, "usage: os_signals handlers|minsigstksz|abort|null-main|null-func|segv-blocked|sigpipe\n");
    return 2;
}
