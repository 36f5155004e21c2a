/* Return-address protection (--stack-checks ret): one scenario per argv[1].
 *   win       vuln() finds its own return address in its frame and overwrites it with win()'s
 *             address, as an exploit would; win() must never run.
 *   overflow  strcpy of a long argument into a 16-byte stack array (the classic smash).
 *   loop      the same overflow through a byte loop.
 * The rest are correct programs that move the stack pointer in every way real code does, and
 * must give no report: setjmp/longjmp (also from a tail call and through many frames),
 * sigsetjmp/siglongjmp out of a signal handler, signal handlers that call and return,
 * swapcontext coroutines, deep recursion and tail calls. */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#define NOINLINE __attribute__((noinline))

static volatile int sink;
static volatile uintptr_t want;     /* not a local: its own stack slot would match first at -O0 */

NOINLINE void win(void)
{
    puts("WIN: a corrupted return reached win()");
    exit(42);
}

NOINLINE void vuln(void)
{
    volatile uintptr_t buf[4] = {1, 2, 3, 4};
    want = (uintptr_t)__builtin_extract_return_addr(__builtin_return_address(0));
    /* the saved return address lies within 64 words of buf: above it (x86-64) or below (arm64) */
    for (int i = -64; i < 64; i++)
        if (buf[i] == want) {
            buf[i] = (uintptr_t)win;                /* @smash */
            printf("smashed %p\n", (void *)&buf[i]);
            fflush(stdout);
            break;
        }
    sink = (int)buf[0];
}                                                   /* @ret_win */

NOINLINE void copy_arg(const char *s)
{
    char buf[16];
    strcpy(buf, s);                                 /* @overflow */
    sink = buf[0];
}

NOINLINE void copy_loop(const char *s)
{
    char buf[16];
    volatile char *d = buf;
    for (size_t i = 0; s[i]; i++)
        d[i] = s[i];                                /* @loop */
    sink = buf[0];
}

static jmp_buf env;
static sigjmp_buf senv;

NOINLINE void jump(int depth)
{
    if (depth == 0)
        longjmp(env, 7);                            /* may be a tail call */
    jump(depth - 1);
    sink++;
}

NOINLINE void jump_tail(void) { longjmp(env, 3); }

NOINLINE int leaf(int x) { return x * 3 + sink; }

NOINLINE int recurse(int n) { return n ? recurse(n - 1) + leaf(n) : 0; }

static void handler(int sig)
{
    sink += recurse(10) + sig;
}

static void jumping_handler(int sig)
{
    siglongjmp(senv, sig);
}

static ucontext_t main_ctx, co_ctx;
static char co_stack[64 << 10];

static void coroutine(void)
{
    for (int i = 0; i < 5; i++) {
        sink += recurse(5);
        printf("coroutine %d\n", i);
        swapcontext(&co_ctx, &main_ctx);
    }
}

NOINLINE int correct(void)
{
    int total = 0;
    for (int round = 0; round < 3; round++) {
        int v = setjmp(env);
        if (v == 0)
            jump(20);
        total += v;
        v = setjmp(env);
        if (v == 0)
            jump_tail();
        total += v;
        total += recurse(30);
    }
    printf("longjmp %d\n", total);

    signal(SIGUSR1, handler);
    for (int i = 0; i < 3; i++)
        raise(SIGUSR1);
    printf("signals %d\n", sink > 0);

    signal(SIGUSR2, jumping_handler);
    int got = sigsetjmp(senv, 1);
    if (got == 0)
        raise(SIGUSR2);
    printf("siglongjmp %d\n", got);

    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = co_stack;
    co_ctx.uc_stack.ss_size = sizeof co_stack;
    co_ctx.uc_link = &main_ctx;
    makecontext(&co_ctx, coroutine, 0);
    for (int i = 0; i < 5; i++) {
        swapcontext(&main_ctx, &co_ctx);
        printf("main %d\n", i);
    }
    printf("recursion %d\n", recurse(2000));
    return total;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "correct";
    if (!strcmp(what, "win"))
        vuln();                                     /* @call_vuln */
    else if (!strcmp(what, "overflow") || !strcmp(what, "loop")) {
        if (!strcmp(what, "overflow"))
            copy_arg(argv[2]);                      /* @call_copy */
        else
            copy_loop(argv[2]);
        fputs("copied\n", stderr);                 /* unbuffered: seen even if main's return dies */
    } else
        correct();
    puts("done");
    return 0;
}
