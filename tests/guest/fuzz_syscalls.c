/* A guest that calls about 200 system calls with random arguments (the fuzz test and
 * bench/fuzz.py): emsan must answer each with a value, a signal the guest earned, or its end,
 * never an internal error, a host crash or a hang.
 *
 * usage: fuzz_syscalls SEED COUNT
 *
 * It runs as root on the test machine, so what it may touch is fenced in by construction, as a
 * syscall fuzzer's argument types do: path arguments of calls that change files are names
 * without '/' or '.' (only in the working directory, a scratch directory); read-only calls may
 * also name a few files of the guest's own /proc; sockets are AF_UNIX; calls that would end
 * the process on purpose (exit, kill, rt_sigreturn) or create device nodes (mknod) are left
 * out, and a child that a fork-family call made exits at once. Every call runs under a 20 ms
 * timer whose no-op handler ends any wait, and the handler, its mask and the timer are set again
 * before each call. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

enum { PATH_RO = 1, PATH_RW = 2, SOCKET = 4 };

struct call {
    long nr;
    const char *name;
    unsigned char paths;      /* bit i: argument i is a path */
    unsigned char kind;
};

#define C(n, paths, kind) {SYS_##n, #n, paths, kind}
static const struct call calls[] = {
#ifdef SYS_open
    C(open, 1, PATH_RO), C(stat, 1, PATH_RO), C(lstat, 1, PATH_RO), C(access, 1, PATH_RO), C(readlink, 1, PATH_RO),
    C(creat, 1, PATH_RW), C(mkdir, 1, PATH_RW), C(rmdir, 1, PATH_RW), C(unlink, 1, PATH_RW), C(rename, 3, PATH_RW),
    C(link, 3, PATH_RW), C(symlink, 3, PATH_RW), C(chmod, 1, PATH_RW), C(chown, 1, PATH_RW), C(lchown, 1, PATH_RW),
    C(utime, 1, PATH_RW), C(utimes, 1, PATH_RW), C(futimesat, 2, PATH_RW), C(dup2, 0, 0), C(pipe, 0, 0),
    C(poll, 0, 0), C(select, 0, 0), C(epoll_create, 0, 0), C(epoll_wait, 0, 0), C(eventfd, 0, 0),
    C(getdents, 0, 0), C(alarm, 0, 0), C(pause, 0, 0), C(time, 0, 0), C(getpgrp, 0, 0), C(fork, 0, 0),
    C(vfork, 0, 0), C(arch_prctl, 0, 0),
#endif
    C(openat, 2, PATH_RO), C(newfstatat, 2, PATH_RO), C(statx, 2, PATH_RO), C(faccessat, 2, PATH_RO),
    C(faccessat2, 2, PATH_RO), C(readlinkat, 2, PATH_RO), C(statfs, 1, PATH_RO), C(getxattr, 1, PATH_RO),
    C(lgetxattr, 1, PATH_RO), C(listxattr, 1, PATH_RO), C(llistxattr, 1, PATH_RO), C(chdir, 1, PATH_RO),
    C(execve, 1, PATH_RO), C(execveat, 2, PATH_RO), C(openat2, 2, PATH_RO),
    C(mkdirat, 2, PATH_RW), C(unlinkat, 2, PATH_RW), C(renameat, 10, PATH_RW), C(renameat2, 10, PATH_RW),
    C(linkat, 10, PATH_RW), C(symlinkat, 5, PATH_RW), C(fchmodat, 2, PATH_RW), C(fchownat, 2, PATH_RW),
    C(utimensat, 2, PATH_RW), C(truncate, 1, PATH_RW), C(setxattr, 1, PATH_RW), C(lsetxattr, 1, PATH_RW),
    C(removexattr, 1, PATH_RW), C(lremovexattr, 1, PATH_RW),
    C(read, 0, 0), C(write, 0, 0), C(pread64, 0, 0), C(pwrite64, 0, 0), C(readv, 0, 0), C(writev, 0, 0),
    C(preadv, 0, 0), C(pwritev, 0, 0), C(preadv2, 0, 0), C(pwritev2, 0, 0), C(lseek, 0, 0), C(sendfile, 0, 0),
    C(copy_file_range, 0, 0), C(close, 0, 0), C(close_range, 0, 0), C(dup, 0, 0), C(dup3, 0, 0), C(fcntl, 0, 0),
    C(ioctl, 0, 0), C(pipe2, 0, 0), C(fstat, 0, 0), C(fstatfs, 0, 0), C(getdents64, 0, 0), C(getcwd, 0, 0),
    C(fchdir, 0, 0), C(fchmod, 0, 0), C(fchown, 0, 0), C(ftruncate, 0, 0), C(fsync, 0, 0), C(fdatasync, 0, 0),
    C(syncfs, 0, 0), C(sync, 0, 0), C(fadvise64, 0, 0), C(flock, 0, 0), C(fallocate, 0, 0), C(readahead, 0, 0),
    C(sync_file_range, 0, 0), C(memfd_create, 0, 0), C(umask, 0, 0), C(fgetxattr, 0, 0), C(fsetxattr, 0, 0),
    C(fremovexattr, 0, 0), C(flistxattr, 0, 0),
    C(ppoll, 0, 0), C(pselect6, 0, 0), C(epoll_create1, 0, 0), C(epoll_ctl, 0, 0), C(epoll_pwait, 0, 0),
    C(epoll_pwait2, 0, 0), C(eventfd2, 0, 0),
    C(socket, 0, SOCKET), C(socketpair, 0, SOCKET), C(listen, 0, 0), C(accept, 0, 0), C(accept4, 0, 0),
    C(getsockname, 0, 0), C(getpeername, 0, 0), C(shutdown, 0, 0), C(setsockopt, 0, 0), C(getsockopt, 0, 0),
    C(recvfrom, 0, 0), C(recvmsg, 0, 0), C(sendto, 0, 0),
    C(brk, 0, 0), C(mmap, 0, 0), C(munmap, 0, 0), C(mprotect, 0, 0), C(pkey_mprotect, 0, 0), C(mremap, 0, 0),
    C(madvise, 0, 0), C(mincore, 0, 0), C(msync, 0, 0), C(mlock, 0, 0), C(mlock2, 0, 0), C(munlock, 0, 0),
    C(mlockall, 0, 0), C(munlockall, 0, 0),
    C(getpid, 0, 0), C(gettid, 0, 0), C(getppid, 0, 0), C(getpgid, 0, 0), C(getsid, 0, 0), C(setpgid, 0, 0),
    C(setsid, 0, 0), C(getuid, 0, 0), C(geteuid, 0, 0), C(getgid, 0, 0), C(getegid, 0, 0), C(getresuid, 0, 0),
    C(getresgid, 0, 0), C(getgroups, 0, 0), C(setuid, 0, 0), C(setgid, 0, 0), C(setreuid, 0, 0),
    C(setregid, 0, 0), C(setresuid, 0, 0), C(setresgid, 0, 0), C(setgroups, 0, 0), C(uname, 0, 0),
    C(sysinfo, 0, 0), C(set_tid_address, 0, 0), C(set_robust_list, 0, 0), C(get_robust_list, 0, 0),
    C(rseq, 0, 0), C(prctl, 0, 0), C(getrandom, 0, 0), C(prlimit64, 0, 0), C(getrlimit, 0, 0),
    C(setrlimit, 0, 0), C(getrusage, 0, 0), C(times, 0, 0), C(sched_getaffinity, 0, 0),
    C(sched_setaffinity, 0, 0), C(sched_yield, 0, 0), C(getcpu, 0, 0), C(getpriority, 0, 0),
    C(setpriority, 0, 0), C(sched_getscheduler, 0, 0), C(sched_getparam, 0, 0), C(sched_setscheduler, 0, 0),
    C(sched_setparam, 0, 0), C(sched_get_priority_max, 0, 0), C(sched_get_priority_min, 0, 0),
    C(personality, 0, 0), C(clock_gettime, 0, 0), C(clock_getres, 0, 0), C(gettimeofday, 0, 0),
    C(nanosleep, 0, 0), C(clock_nanosleep, 0, 0), C(clone, 0, 0), C(clone3, 0, 0), C(wait4, 0, 0),
    C(waitid, 0, 0), C(futex, 0, 0),
    C(rt_sigaction, 0, 0), C(rt_sigprocmask, 0, 0), C(rt_sigpending, 0, 0), C(rt_sigsuspend, 0, 0),
    C(rt_sigtimedwait, 0, 0), C(sigaltstack, 0, 0), C(setitimer, 0, 0), C(getitimer, 0, 0),
    /* not implemented by emsan: -ENOSYS without touching the host */
    C(acct, 0, 0), C(ptrace, 0, 0), C(kcmp, 0, 0), C(bpf, 0, 0), C(io_setup, 0, 0), C(inotify_init1, 0, 0),
    C(timerfd_create, 0, 0), C(signalfd4, 0, 0), C(userfaultfd, 0, 0), C(membarrier, 0, 0),
};
#define NCALLS (sizeof calls / sizeof calls[0])

static uint64_t rng;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

#define SCRATCH 65536
static unsigned char scratch[SCRATCH + 64];
static char *playground;                 /* 16 MiB the guest maps, unmaps and re-protects */
#define PLAYGROUND (16UL << 20)
static void *object;                     /* a malloc'd object: in emsan's heap under a sanitizer */

static const char *const readonly_paths[] = {
    "/proc/self/maps", "/proc/self/mem", "/proc/self/status", "/proc/self/", "/proc/self/fd", "/proc/self/fd/1",
    "/proc/thread-self/smaps", "//proc/self/./environ", "/proc/self/auxv", "/proc/self/task", "/proc/self/cwd",
    "/proc/self/cmdline", "/proc/self/stat", "/dev/fd/0", "/proc/self/fd/../maps",
};

static const uint64_t special[] = {
    0, 1, 2, 3, 4, 8, 16, 64, 255, 256, 4095, 4096, 4097, 65536, 0x7ffff000, 0x7fffffff, 0x80000000,
    0xffffffff, 0x100000000, 1ULL << 40, 1ULL << 44, 1ULL << 47, 1ULL << 48, 1ULL << 63, ~0ULL, ~0ULL - 4095,
    ~0ULL - 1, (uint64_t)-100 /* AT_FDCWD */,
};

/* A relative name made of letters only (no '/', no '.'), NUL-terminated, in the scratch area. */
static uint64_t name(void)
{
    unsigned off = (unsigned)(next() % (SCRATCH - 32));
    unsigned len = 1 + (unsigned)(next() % 8);
    for (unsigned i = 0; i < len; i++) scratch[off + i] = (unsigned char)('a' + next() % 4);
    scratch[off + len] = 0;
    return (uint64_t)(uintptr_t)(scratch + off);
}

static uint64_t path_arg(int readonly)
{
    switch (next() % 8) {
    case 0: return 0;
    case 1: return special[next() % (sizeof special / sizeof special[0])];
    case 2:
        if (readonly) return (uint64_t)(uintptr_t)readonly_paths[next() % (sizeof readonly_paths / sizeof readonly_paths[0])];
        /* fall through */
    default: return name();
    }
}

static uint64_t value(void)
{
    switch (next() % 16) {
    case 0: case 1: case 2: return next() % 12;                          /* descriptors, small counts, flags */
    case 3: return special[next() % (sizeof special / sizeof special[0])];
    case 4: return next();
    case 5: return (uint32_t)next();
    case 6: case 7: case 8: case 9: case 10:
        return (uint64_t)(uintptr_t)(scratch + next() % SCRATCH);        /* a buffer */
    case 11: return (uint64_t)(uintptr_t)(scratch + SCRATCH - next() % 64);   /* a buffer at its end */
    case 12: return (uint64_t)(uintptr_t)(playground + (next() % (PLAYGROUND / 4096)) * 4096);
    case 13: return (next() % 256) * 4096;                               /* lengths */
    case 14: return (uint64_t)(uintptr_t)object;
    default: return 1ULL << (next() % 64);
    }
}

/* Scratch bytes: small numbers (counts and lengths in structures), letters, pointers into
 * the scratch area itself (iovecs, msghdrs), never '/' or '.'. */
static void refill(void)
{
    for (unsigned i = 0; i + 8 <= SCRATCH; i += 8) {
        uint64_t v;
        switch (next() % 4) {
        case 0: v = next() % 64; break;
        case 1: v = (uint64_t)(uintptr_t)(scratch + next() % SCRATCH); break;
        case 2: v = 0x6162636461626364ULL; break;
        default: v = next() % 4096; break;
        }
        memcpy(scratch + i, &v, 8);
    }
    for (unsigned i = 0; i < SCRATCH; i++)
        if (scratch[i] == '/' || scratch[i] == '.') scratch[i] = 'z';
}

static void ding(int sig) { (void)sig; }

static void guard(void)
{
    struct sigaction sa = {.sa_handler = ding};
    sigaction(SIGALRM, &sa, NULL);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGALRM);
    sigprocmask(SIG_UNBLOCK, &s, NULL);
    struct itimerval it = {{0, 0}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: fuzz_syscalls SEED COUNT\n");
        return 2;
    }
    rng = strtoull(argv[1], NULL, 0) * 2654435761ULL + 88172645463325252ULL;
    long count = atol(argv[2]);
    /* The count of calls made so far, for the harness, on a descriptor random ones rarely hit. */
    int progress = (int)syscall(SYS_openat, AT_FDCWD, "progress", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (progress >= 0 && syscall(SYS_dup3, progress, 1000, 0) == 1000) {
        syscall(SYS_close, progress);
        progress = 1000;
    }
    playground = mmap(NULL, PLAYGROUND, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    object = malloc(64);
    refill();
    for (long i = 0; i < count; i++) {
        const struct call *c = &calls[next() % NCALLS];
        uint64_t a[6];
        for (int k = 0; k < 6; k++)
            a[k] = c->paths >> k & 1 ? path_arg(c->kind == PATH_RO) : value();
        if (c->kind == SOCKET) a[0] = 1;                                  /* AF_UNIX only */
        if (c->nr == SYS_sendto) a[4] = a[5] = 0;                         /* no destination */
        if (c->nr == SYS_openat2) a[2] = (uint64_t)(uintptr_t)(scratch + (next() % 512) * 8);
        if (i % 256 == 255) refill();
        if (i % 16 == 0) syscall(SYS_pwrite64, progress, &i, sizeof i, 0);
        int forks = c->nr == SYS_clone || c->nr == SYS_clone3;
#ifdef SYS_fork
        forks |= c->nr == SYS_fork || c->nr == SYS_vfork;
#endif
        if (c->nr == SYS_clone) a[1] = 0;                                 /* the child on this stack */
        guard();
        long r = syscall(c->nr, a[0], a[1], a[2], a[3], a[4], a[5]);
        if (forks && r == 0)
            syscall(SYS_exit_group, 0);       /* a child (a real process under emsan) ends at once */
    }
    syscall(SYS_pwrite64, progress, &count, sizeof count, 0);
    /* (no message at the end: its descriptor may be a pipe the guest filled itself) */
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    return 0;
}
