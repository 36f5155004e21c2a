/* Processes: fork, vfork, pipes, wait4/waitid statuses, SIGCHLD, kill of children and process
 * groups, inherited descriptors, execve of binaries and #! scripts and its errors, and a heap bug
 * in a child. Each case prints what a native run prints (pids are printed as relations, never as
 * numbers, except where a test needs the child's pid). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t chld_seen;

static void on_chld(int sig) { (void)sig; chld_seen++; }

static volatile sig_atomic_t usr_seen;

static void on_usr(int sig) { usr_seen += sig == SIGUSR1 ? 1 : 10; }

static void status_line(const char *what, int st) {
    if (WIFEXITED(st))
        printf("%s: exited %d\n", what, WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        printf("%s: killed by signal %d\n", what, WTERMSIG(st));
    else
        printf("%s: status %#x\n", what, st);
}

static int pipes(void) {
    /* Three children write through one pipe; the parent reads until EOF and reaps them in order. */
    int fds[2];
    if (pipe(fds)) return 1;
    signal(SIGCHLD, on_chld);
    pid_t kids[3];
    pid_t me = getpid();
    for (int i = 0; i < 3; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            close(fds[0]);
            char line[64];
            int n = snprintf(line, sizeof line, "child %d: parent is me %d, pid differs %d\n", i,
                             getppid() == me, getpid() != me);
            write(fds[1], line, n);
            _exit(10 + i);
        }
        siginfo_t si;                   /* one at a time (the pipe's order); WNOWAIT keeps it reapable */
        waitid(P_PID, kids[i], &si, WEXITED | WNOWAIT);
    }
    close(fds[1]);
    char buf[512];
    size_t got = 0;
    ssize_t n;
    while ((n = read(fds[0], buf + got, sizeof buf - 1 - got)) > 0)
        got += n;
    buf[got] = 0;
    fputs(buf, stdout);
    for (int i = 0; i < 3; i++) {
        int st = 0;
        pid_t w = waitpid(kids[i], &st, 0);
        char what[32];
        snprintf(what, sizeof what, "child %d reaped %d", i, w == kids[i]);
        status_line(what, st);
    }
    int none = waitpid(-1, NULL, 0);
    printf("no more children: %d errno ECHILD %d\n", none, errno == ECHILD);
    printf("SIGCHLD seen: %d\n", chld_seen > 0);
    fflush(stdout);

    /* A child killed by the parent's SIGTERM; one that stops with SIGSEGV; waitid's siginfo. */
    pid_t sleeper = fork();
    if (sleeper == 0) {
        for (;;) pause();
    }
    kill(sleeper, SIGTERM);
    int st;
    waitpid(sleeper, &st, 0);
    status_line("sleeper", st);
    pid_t crasher = fork();
    if (crasher == 0) {
        signal(SIGSEGV, SIG_DFL);
        *(volatile int *)16 = 1;
        _exit(0);
    }
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = waitid(P_PID, crasher, &si, WEXITED);
    printf("waitid %d: signo %d code %d (CLD_DUMPED %d, CLD_KILLED %d) status %d pid ok %d\n", r, si.si_signo,
           si.si_code == CLD_DUMPED || si.si_code == CLD_KILLED, CLD_DUMPED, CLD_KILLED, si.si_status,
           si.si_pid == crasher);
    pid_t quick = fork();
    if (quick == 0) _exit(3);
    memset(&si, 0, sizeof si);
    waitid(P_ALL, 0, &si, WEXITED);
    printf("waitid P_ALL: code %d (CLD_EXITED %d) status %d pid ok %d\n", si.si_code, CLD_EXITED, si.si_status,
           si.si_pid == quick);
    none = waitpid(-1, &st, WNOHANG);
    printf("WNOHANG with none: %d errno ECHILD %d\n", none, errno == ECHILD);

    /* A shared file offset: the child's writes move the parent's offset too. */
    char path[] = "/tmp/emsan-procs-XXXXXX";
    int fd = mkstemp(path);
    unlink(path);
    write(fd, "parent1 ", 8);
    pid_t w = fork();
    if (w == 0) {
        write(fd, "child ", 6);
        _exit(0);
    }
    waitpid(w, NULL, 0);
    write(fd, "parent2\n", 8);
    char back[64] = {0};
    pread(fd, back, sizeof back - 1, 0);
    printf("shared offset: %s", back);

    /* vfork: the parent resumes after the child's _exit. */
    pid_t v = vfork();
    if (v == 0) _exit(42);
    waitpid(v, &st, 0);
    status_line("vfork child", st);

    /* Signals from the parent reach the child's handlers: one in pause, one in a blocking read
     * (no SA_RESTART: read fails with EINTR). */
    int ready[2], hold[2];
    pipe(ready);
    pipe(hold);
    pid_t catcher = fork();
    if (catcher == 0) {
        struct sigaction sa = {0};
        sa.sa_handler = on_usr;
        sigaction(SIGUSR1, &sa, NULL);
        sigaction(SIGUSR2, &sa, NULL);
        write(ready[1], "r", 1);
        while (!usr_seen) pause();
        printf("catcher: SIGUSR1 handled in pause %d\n", usr_seen);
        write(ready[1], "r", 1);
        char c;
        ssize_t r2 = read(hold[0], &c, 1);
        printf("catcher: read returned %zd, EINTR %d, handled %d\n", r2, errno == EINTR, usr_seen);
        fflush(stdout);
        _exit(0);
    }
    char c;
    read(ready[0], &c, 1);
    kill(catcher, SIGUSR1);
    read(ready[0], &c, 1);
    usleep(100000);          /* the catcher is in its read */
    kill(catcher, SIGUSR2);
    waitpid(catcher, &st, 0);
    status_line("catcher", st);

    /* A process group of two children, killed together. */
    pid_t leader = fork();
    if (leader == 0) {
        setpgid(0, 0);
        for (;;) pause();
    }
    setpgid(leader, leader);
    pid_t member = fork();
    if (member == 0) {
        setpgid(0, leader);
        for (;;) pause();
    }
    setpgid(member, leader);
    printf("group of the member is the leader %d\n", getpgid(member) == leader);
    kill(-leader, SIGUSR1);
    waitpid(leader, &st, 0);
    status_line("leader", st);
    waitpid(member, &st, 0);
    status_line("member", st);
    return 0;
}

static int exec_cases(const char *self, const char *script, const char *foreign) {
    const char *cases[][2] = {{"missing", "/nonexistent/emsan-x"}, {"directory", "/tmp"},
                              {"not executable", "/etc/hostname"}, {"foreign", foreign},
                              {"script", script}, {"self", self}};
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            char *argv[] = {(char *)"argv0-given", (char *)"one", (char *)"two words", NULL};
            char *envp[] = {(char *)"EMSAN_PROCS=env-passed", NULL};
            if (strcmp(cases[i][0], "self") == 0) argv[1] = (char *)"args";
            execve(cases[i][1], argv, envp);
            printf("%s: execve failed: %s\n", cases[i][0], strerrorname_np(errno));
            fflush(stdout);
            _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        status_line(cases[i][0], st);
    }
    return 0;
}

static int args(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        printf("argv[%d] = %s\n", i, strchr(argv[i], '/') ? strrchr(argv[i], '/') + 1 : argv[i]);
    const char *e = getenv("EMSAN_PROCS");
    printf("env: %s, PATH set %d\n", e ? e : "(none)", getenv("PATH") != NULL);
    return 5;
}

static int uaf_child(void) {
    pid_t pid = fork();
    if (pid == 0) {
        char *p = malloc(40);
        strcpy(p, "child");
        free(p);
        return p[3] == 'l';             /* @uaf_child */
    }
    printf("child pid %d\n", pid);
    fflush(stdout);
    int st;
    waitpid(pid, &st, 0);
    status_line("uaf child", st);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && !strcmp(argv[1], "pipes")) return pipes();
    if (argc > 4 && !strcmp(argv[1], "exec")) return exec_cases(argv[2], argv[3], argv[4]);
    if (argc > 1 && !strcmp(argv[1], "uaf-child")) return uaf_child();
    if (argc > 1 && !strcmp(argv[1], "system")) {
        int r = system("echo system says $((6 * 7)) | cat; exit 9");
        printf("system returned: %d\n", WEXITSTATUS(r));
        return 0;
    }
    return args(argc, argv);
}
