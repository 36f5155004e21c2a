/* What a hostile or careless guest does to the system it runs on; every line it prints is what
 * Linux answered, so a run under emsan is compared with a native one (qemu-aarch64 for arm64).
 *
 * usage: hostile args              system calls with out-of-range arguments: errno of each
 *        hostile proc WORKDIR      the process's own /proc through many path spellings, mem, fd
 *        hostile timer-loop        a timer signal must reach a loop that makes no system call
 *        hostile timer-storm       a 1 us interval timer must not stop the program's progress
 *        hostile timer-matrix      a memory-heavy loop under a 1 ms timer computes what it computes natively
 *        hostile own heap|kernel   munmap/mremap/mmap(MAP_FIXED) of a malloc'd page (heap) or of a
 *                                  kernel address (kernel): under emsan the first must fail as the
 *                                  second does natively
 *        hostile alloc             pvalloc(SIZE_MAX), memalign with alignments glibc rounds up
 *        hostile churn N           N mallocs and frees of 1..6000 bytes
 *        hostile mapping           partial munmap of 256 MiB, mprotect, mremap, MAP_FIXED, exact faults
 *        hostile bigio             write/read of 4 GiB with an 8 KiB buffer
 *        hostile sabotage PATH     replace PATH by a directory, then overflow a heap object
 *        hostile getppid           what getppid returned
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SHOW(what, call) show(what, (long)(call))

static void show(const char *what, long r)
{
    if (r == -1)
        printf("%s: errno %d\n", what, errno);
    else
        printf("%s: ok\n", what);
    errno = 0;
}

static char buf[8192];
static const volatile long constant = 7;
static volatile long global = 1;

/* ---- args ------------------------------------------------------------------------------------- */
static int args(void)
{
    int fd = open("/proc/self/exe", O_RDONLY);      /* a readable regular file */
    int tmp = memfd_create("scratch", 0);           /* a writable one */
    struct iovec iov[2] = {{buf, 16}, {buf, 16}};
    struct timespec ts;
    struct rlimit rl;
    int sv[2], dg[2], fds[2];
    SHOW("write SIZE_MAX", syscall(SYS_write, tmp, buf, SIZE_MAX));
    SHOW("write NULL", syscall(SYS_write, tmp, NULL, 10));
    SHOW("write kernel address", syscall(SYS_write, tmp, (void *)-4096L, 10));
    SHOW("write 0 bytes", syscall(SYS_write, tmp, buf, 0));
    SHOW("pwrite64 SIZE_MAX", syscall(SYS_pwrite64, tmp, buf, SIZE_MAX, 0));
    SHOW("pwrite64 offset -1", syscall(SYS_pwrite64, tmp, buf, 10, -1L));
    SHOW("pread64 offset -1", syscall(SYS_pread64, fd, buf, 10, -1L));
    SHOW("pread64 huge count", syscall(SYS_pread64, fd, buf, SIZE_MAX, 0) > 0 ? 0 : -1);
    SHOW("read into NULL", syscall(SYS_read, fd, NULL, 10));
    SHOW("readv 1<<20 iovecs", syscall(SYS_readv, fd, iov, 1L << 20));
    SHOW("readv 1025 iovecs", syscall(SYS_readv, fd, iov, 1025));
    iov[0].iov_len = 1ULL << 63;
    SHOW("writev negative iov_len", syscall(SYS_writev, tmp, iov, 1));
    iov[0].iov_len = 1ULL << 62;
    SHOW("writev huge iov_len (written up to the first unmapped byte)", syscall(SYS_writev, tmp, iov, 1));
    SHOW("writev iovecs at NULL", syscall(SYS_writev, tmp, NULL, 2));
    SHOW("poll 1<<40 fds (0: nfds is 32 bits)", syscall(SYS_ppoll, buf, 1L << 40, &(struct timespec){0, 0}, NULL, 8));
    SHOW("poll 0x7fffffff fds", syscall(SYS_ppoll, buf, 0x7fffffffL, NULL, NULL, 8));
    SHOW("poll fds at NULL", syscall(SYS_ppoll, NULL, 1, &(struct timespec){0, 0}, NULL, 8));
    SHOW("clock_gettime 1<<40 (id 0)", syscall(SYS_clock_gettime, 1L << 40, &ts));
    SHOW("clock_gettime 0x7fffffff", syscall(SYS_clock_gettime, 0x7fffffffL, &ts));
    SHOW("clock_gettime into NULL", syscall(SYS_clock_gettime, CLOCK_REALTIME, NULL));
    SHOW("clock_getres 99", syscall(SYS_clock_getres, 99, &ts));
    SHOW("prlimit64 1<<40 (resource 0)", syscall(SYS_prlimit64, 0, 1L << 40, NULL, &rl));
    SHOW("prlimit64 resource 999", syscall(SYS_prlimit64, 0, 999, NULL, &rl));
    SHOW("fcntl F_DUPFD 1<<62", syscall(SYS_fcntl, 0, F_DUPFD, 1L << 62));
    SHOW("fcntl bad command", syscall(SYS_fcntl, 0, 0x7777, 0));
    SHOW("dup3 to itself", syscall(SYS_dup3, 0, 0, 0));
    SHOW("dup3 to 1<<30", syscall(SYS_dup3, 0, 1 << 30, 0));
    SHOW("lseek whence 99", syscall(SYS_lseek, fd, 0, 99));
    SHOW("ftruncate -1", syscall(SYS_ftruncate, tmp, -1L));
    SHOW("openat NULL path", syscall(SYS_openat, AT_FDCWD, NULL, O_RDONLY));
    memset(buf, 'a', sizeof buf - 1);
    SHOW("openat 8191-byte path", syscall(SYS_openat, AT_FDCWD, buf, O_RDONLY));
    SHOW("getcwd into 1 byte", syscall(SYS_getcwd, buf, 1));
    SHOW("readlinkat size 0", syscall(SYS_readlinkat, AT_FDCWD, "/proc/self/exe", buf, 0));
    SHOW("ioctl unknown request", syscall(SYS_ioctl, 0, 0xdeadbeefL, 0));
    SHOW("pipe2 bad flags", syscall(SYS_pipe2, fds, 0xffff));
    SHOW("pipe2 into NULL", syscall(SYS_pipe2, NULL, 0));
    SHOW("close_range 5..2", syscall(SYS_close_range, 5, 2, 0));
    SHOW("getrandom into NULL", syscall(SYS_getrandom, NULL, 16, 0));
    SHOW("getrandom bad flags", syscall(SYS_getrandom, buf, 16, 0xff));
    SHOW("rt_sigaction sigsetsize 4", syscall(SYS_rt_sigaction, SIGUSR1, NULL, buf, 4));
    SHOW("rt_sigaction signal 65", syscall(SYS_rt_sigaction, 65, NULL, buf, 8));
    SHOW("rt_sigprocmask how 5", syscall(SYS_rt_sigprocmask, 5, buf, NULL, 8));
    stack_t ss = {.ss_sp = buf, .ss_flags = 0x77, .ss_size = sizeof buf};
    SHOW("sigaltstack bad flags", syscall(SYS_sigaltstack, &ss, NULL));
    ss.ss_flags = 0;
    ss.ss_size = 100;
    SHOW("sigaltstack tiny", syscall(SYS_sigaltstack, &ss, NULL));
    struct itimerval it = {{0, 0}, {0, 2000000}};
    SHOW("setitimer which 99", syscall(SYS_setitimer, 99, &it, NULL));
    SHOW("setitimer usec 2000000", syscall(SYS_setitimer, ITIMER_REAL, &it, NULL));
    SHOW("nanosleep -1 s", syscall(SYS_nanosleep, &(struct timespec){-1, 0}, NULL));
    SHOW("nanosleep 2e9 ns", syscall(SYS_nanosleep, &(struct timespec){0, 2000000000}, NULL));
    SHOW("sched_getaffinity 3 bytes", syscall(SYS_sched_getaffinity, 0, 3, buf));
    SHOW("kill signal 99", syscall(SYS_kill, getpid(), 99));
    SHOW("futex unaligned", syscall(SYS_futex, buf + 1, 0, 0, NULL, NULL, 0));
    SHOW("socket family 999", syscall(SYS_socket, 999, SOCK_STREAM, 0));
    SHOW("socketpair stream", socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    SHOW("socketpair dgram", socketpair(AF_UNIX, SOCK_DGRAM, 0, dg));
    SHOW("sendto SIZE_MAX datagram", syscall(SYS_sendto, dg[0], buf, SIZE_MAX, MSG_DONTWAIT, NULL, 0));
    SHOW("sendto from NULL", syscall(SYS_sendto, sv[0], NULL, 10, MSG_DONTWAIT, NULL, 0));
    SHOW("connect address 1000 bytes", syscall(SYS_connect, sv[0], buf, 1000));
    socklen_t len = (socklen_t)-1;
    SHOW("getsockopt length -1", syscall(SYS_getsockopt, sv[0], SOL_SOCKET, SO_TYPE, buf, &len));
    SHOW("select nfds -1", syscall(SYS_pselect6, -1, NULL, NULL, NULL, NULL, NULL));
    SHOW("utimensat nsec 2e9", syscall(SYS_utimensat, AT_FDCWD, "/proc/self/exe",
                                       (struct timespec[2]){{0, 2000000000}, {0, 0}}, 0));

    /* memory: wrap-around, beyond the address space, bad arguments */
    long pg = sysconf(_SC_PAGESIZE);
    char *p = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    SHOW("mmap", p == MAP_FAILED ? -1 : 0);
    SHOW("mmap wrapping past 2^64", (long)mmap((void *)-8192L, 16384, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
    SHOW("mmap fixed at 2^48", (long)mmap((void *)(1L << 48), 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
#ifdef __x86_64__
    SHOW("mmap fixed at 2^47", (long)mmap((void *)(1L << 47), 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
#endif
    void *h = mmap((void *)(1L << 48), 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    SHOW("mmap hint at 2^48 placed below", h == MAP_FAILED || h == (void *)(1L << 48) ? -1 : 0);
    SHOW("mmap length 0", (long)mmap(NULL, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    SHOW("mmap length SIZE_MAX", (long)mmap(NULL, SIZE_MAX, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    SHOW("mmap no mapping type", (long)mmap(NULL, 4096, PROT_READ, MAP_ANONYMOUS, -1, 0));
    SHOW("mmap unaligned offset", (long)mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 1));
    SHOW("mmap bad fd", (long)mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 999, 0));
    SHOW("mmap a pipe", pipe(fds) || (long)mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fds[0], 0) == -1 ? -1 : 0);
    SHOW("munmap unaligned", syscall(SYS_munmap, p + 1, 4096));
    SHOW("munmap length 0", syscall(SYS_munmap, p, 0));
    SHOW("munmap kernel address", syscall(SYS_munmap, -4096L, 4096));
    SHOW("munmap nothing mapped", syscall(SYS_munmap, 1L << 40, 4096));
    SHOW("mprotect unaligned", syscall(SYS_mprotect, p + 1, 4096, PROT_READ));
    SHOW("mprotect bad protection", syscall(SYS_mprotect, p, 4096, 0x1000));
    SHOW("mprotect nothing mapped", syscall(SYS_mprotect, 1L << 40, 4096, PROT_READ));
    SHOW("madvise advice 999", syscall(SYS_madvise, p, 4096, 999));
    SHOW("madvise unaligned", syscall(SYS_madvise, p + 1, 4096, MADV_DONTNEED));
    SHOW("mremap to an unaligned fixed address",
         syscall(SYS_mremap, p, pg, pg, MREMAP_MAYMOVE | MREMAP_FIXED, p + 2 * pg + 1));
    SHOW("mremap fixed without maymove", syscall(SYS_mremap, p, pg, pg, MREMAP_FIXED, p + 2 * pg));
    SHOW("mremap overlapping fixed", syscall(SYS_mremap, p, 2 * pg, 2 * pg, MREMAP_MAYMOVE | MREMAP_FIXED, p + pg));
    SHOW("mremap nothing mapped", syscall(SYS_mremap, 1L << 40, pg, pg, MREMAP_MAYMOVE));
    SHOW("mremap grow in place into a neighbour", syscall(SYS_mremap, p, pg, 2 * pg, 0));
    SHOW("mremap flags 0x80", syscall(SYS_mremap, p, pg, pg, 0x80));
    void *cur = sbrk(0);
    SHOW("brk to -4096 keeps the break", (void *)syscall(SYS_brk, -4096L) == cur ? 0 : -1);
    SHOW("mincore unaligned", syscall(SYS_mincore, p + 1, 4096, buf));
    SHOW("msync bad flags", syscall(SYS_msync, p, 4096, MS_SYNC | MS_ASYNC));
    return 0;
}

/* ---- proc ----------------------------------------------------------------------------------- */
static char text[1 << 20];

static long slurp(const char *what, int fd)
{
    long n = 0, r;
    if (fd < 0) {
        printf("%s: errno %d\n", what, errno);
        return -1;
    }
    while (n < (long)sizeof text - 1 && (r = read(fd, text + n, sizeof text - 1 - n)) > 0) n += r;
    text[n] = 0;
    close(fd);
    return n;
}

/* Does this maps listing describe this very program (and not the process hosting it)? */
static void check_maps(const char *what, int fd)
{
    if (slurp(what, fd) < 0) return;
    uintptr_t here = (uintptr_t)&check_maps;
    int mine = 0;
    for (char *line = text; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : line + strlen(line)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && lo <= here && here < hi && perms[2] == 'x')
            mine = 1;
    }
    int foreign = strstr(text, "unicorn") || strstr(text, "python") || strstr(text, "_emsan_native");
    printf("%s: this program's code %d, a foreign process %d\n", what, mine, foreign);
}

static int proc(const char *argv0, const char *workdir)
{
    char path[256], want[PATH_MAX], got[PATH_MAX];
    int pid = getpid();
    check_maps("/proc/self/maps", open("/proc/self/maps", O_RDONLY));
    check_maps("/proc/thread-self/maps", open("/proc/thread-self/maps", O_RDONLY));
    check_maps("/proc/self/./maps", open("/proc/self/./maps", O_RDONLY));
    check_maps("//proc/self/maps", open("//proc/self/maps", O_RDONLY));
    check_maps("/proc//self///maps", open("/proc//self///maps", O_RDONLY));
    check_maps("/proc/self/../self/maps", open("/proc/self/../self/maps", O_RDONLY));
    check_maps("/proc/self/task/../maps", open("/proc/self/task/../maps", O_RDONLY));
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    check_maps("/proc/PID/maps", open(path, O_RDONLY));
    snprintf(path, sizeof path, "/proc/self/task/%d/maps", pid);
    check_maps("/proc/self/task/PID/maps", open(path, O_RDONLY));
    check_maps("/proc/thread-self/../maps", open("/proc/thread-self/../maps", O_RDONLY));
    check_maps("/proc/self/smaps", open("/proc/self/smaps", O_RDONLY));
    printf("smaps has Size lines: %d\n", strstr(text, "\nSize:") != NULL);
    check_maps("/dev/fd/../maps", open("/dev/fd/../maps", O_RDONLY));
    snprintf(path, sizeof path, "%s/link", workdir);
    unlink(path);
    if (symlink("/proc/self", path) == 0) {
        snprintf(path, sizeof path, "%s/link/maps", workdir);
        check_maps("a symlink to /proc/self", open(path, O_RDONLY));
    }
    if (chdir("/proc") == 0) {
        check_maps("self/maps from /proc", open("self/maps", O_RDONLY));
        check_maps("./self/../self/maps from /proc", open("./self/../self/maps", O_RDONLY));
        if (chdir("self") == 0) {
            check_maps("maps from /proc/self", open("maps", O_RDONLY));
            snprintf(path, sizeof path, "/proc/%d", pid);
            printf("getcwd in /proc/self is /proc/PID: %d\n", getcwd(got, sizeof got) && strcmp(got, path) == 0);
        }
        chdir("/");
    }
    int dproc = open("/proc", O_RDONLY | O_DIRECTORY), dself = open("/proc/self", O_RDONLY | O_DIRECTORY);
    check_maps("openat(/proc, self/maps)", openat(dproc, "self/maps", O_RDONLY));
    check_maps("openat(/proc/self, maps)", openat(dself, "maps", O_RDONLY));
    snprintf(path, sizeof path, "task/%d/maps", pid);
    check_maps("openat(/proc/self, task/PID/maps)", openat(dself, path, O_RDONLY));
    close(dproc);

    /* mem: reads and writes this program's memory */
    int mem = open("/proc/self/mem", O_RDWR);
    long v = 0, nv = 42;
    printf("mem open: %d\n", mem >= 0);
    printf("mem pread of a global: %d\n", pread(mem, &v, sizeof v, (off_t)(uintptr_t)&global) == sizeof v && v == 1);
    printf("mem pwrite of a global: %d\n", pwrite(mem, &nv, sizeof nv, (off_t)(uintptr_t)&global) == sizeof nv && global == 42);
    lseek(mem, (off_t)(uintptr_t)&global, SEEK_SET);
    nv = 43;
    printf("mem lseek+write: %d\n", write(mem, &nv, sizeof nv) == sizeof nv && global == 43);
    lseek(mem, (off_t)(uintptr_t)&global, SEEK_SET);
    printf("mem lseek+read: %d\n", read(mem, &v, sizeof v) == sizeof v && v == 43);
    errno = 0;
    long r = (long)pread(mem, &v, sizeof v, 0x1000);
    printf("mem read at an unmapped address: %ld errno %d\n", r, errno);
    nv = 9;
    printf("mem write to read-only data: %d\n",
           pwrite(mem, &nv, sizeof nv, (off_t)(uintptr_t)&constant) == sizeof nv && constant == 9);
    char *none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("mem read of a PROT_NONE page: %d\n", pread(mem, &v, sizeof v, (off_t)(uintptr_t)none) == sizeof v && v == 0);
    errno = 0;
    r = (long)lseek(mem, 0, SEEK_END);
    printf("mem seek to the end: %ld errno %d\n", r, errno);
    close(mem);

    /* exe, cmdline, environ, auxv, status, stat, statm */
    ssize_t n = readlink("/proc/self/exe", got, sizeof got - 1);
    got[n > 0 ? n : 0] = 0;
    printf("exe is this program: %d\n", realpath("/proc/self/exe", want) && strcmp(got, want) == 0 &&
                                           access(got, X_OK) == 0);
    long len = slurp("cmdline", open("/proc/self/cmdline", O_RDONLY));
    printf("cmdline: argv[0] %d, then %s %s, %d bytes too many\n", strcmp(text, argv0) == 0, text + strlen(text) + 1,
           text + strlen(text) + 1 + strlen(text + strlen(text) + 1) + 1,
           (int)(len - (long)(strlen(argv0) + strlen(workdir) + 7)));
    len = slurp("environ", open("/proc/self/environ", O_RDONLY));
    extern char **environ;
    long want_len = 0;
    for (char **e = environ; *e; e++) want_len += (long)strlen(*e) + 1;
    printf("environ: matches %d\n", len == want_len && (len == 0 || strcmp(text, environ[0]) == 0));
    len = slurp("auxv", open("/proc/self/auxv", O_RDONLY));
    int pagesz = 0, entry = 0;
    for (long i = 0; i + 16 <= len; i += 16) {
        unsigned long k, val;
        memcpy(&k, text + i, 8);
        memcpy(&val, text + i + 8, 8);
        pagesz |= k == AT_PAGESZ && val == (unsigned long)getpagesize();
        entry |= k == AT_ENTRY && val == getauxval(AT_ENTRY);
    }
    printf("auxv: AT_PAGESZ %d AT_ENTRY %d\n", pagesz, entry);
    slurp("status", open("/proc/self/status", O_RDONLY));
    char line[64];
    snprintf(line, sizeof line, "\nPid:\t%d\n", pid);
    printf("status: Name hostile %d, Pid %d\n", strncmp(text, "Name:\thostile\n", 14) == 0, strstr(text, line) != NULL);
    slurp("stat", open("/proc/self/stat", O_RDONLY));
    int spid = 0;
    char comm[32] = "";
    sscanf(text, "%d %31s", &spid, comm);
    printf("stat: pid %d, comm %s\n", spid == pid, comm);
    slurp("statm", open("/proc/self/statm", O_RDONLY));
    long f[7];
    printf("statm: %d numbers\n", sscanf(text, "%ld %ld %ld %ld %ld %ld %ld", f, f + 1, f + 2, f + 3, f + 4, f + 5, f + 6));

    /* descriptors: only this program's */
    snprintf(path, sizeof path, "%s/afile", workdir);
    int af = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    snprintf(line, sizeof line, "/proc/self/fd/%d", af);
    n = readlink(line, got, sizeof got - 1);
    got[n > 0 ? n : 0] = 0;
    printf("fd link names the file: %d\n", realpath(path, want) && strcmp(got, want) == 0);
    DIR *d = opendir("/proc/self/fd");
    printf("descriptors:");
    int listed[64], nl = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.' && nl < 64) listed[nl++] = atoi(e->d_name);
    for (int i = 0; i < nl; i++)
        for (int j = i + 1; j < nl; j++)
            if (listed[j] < listed[i]) { int t = listed[i]; listed[i] = listed[j]; listed[j] = t; }
    for (int i = 0; i < nl; i++) printf(" %d", listed[i]);
    printf("\n");
    if (d) closedir(d);
    /* Descriptors this program never opened (the host process's, if it could see them) are
     * opened for writing and scribbled on. */
    int reached = 0;
    for (int k = 3; k < 64; k++) {
        if (k == af || k == dself) continue;
        snprintf(line, sizeof line, "/dev/fd/%d", k);
        int t = open(line, O_RDWR | O_TRUNC);
        snprintf(line, sizeof line, "/proc/self/fd/%d", k);
        int u = open(line, O_WRONLY | O_TRUNC);
        reached += (t >= 0) + (u >= 0);
        if (t >= 0) { write(t, "scribbled", 9); close(t); }
        if (u >= 0) { write(u, "scribbled", 9); close(u); }
    }
    printf("descriptors reached that this program never opened: %d\n", reached);
    write(af, "through the link\n", 17);
    snprintf(line, sizeof line, "/proc/self/fd/%d", af);
    int again = open(line, O_RDONLY);
    printf("reopened through fd/N: %ld bytes\n", again >= 0 ? (long)read(again, got, 64) : -1L);
    int tasks = 0;
    d = opendir("/proc/self/task");
    for (struct dirent *e; d && (e = readdir(d));) tasks += e->d_name[0] != '.';
    printf("threads listed: %d\n", tasks);
    if (d) closedir(d);
    return 0;
}

/* ---- timers ------------------------------------------------------------------------------------ */
static volatile sig_atomic_t fired, handled;

static void on_alarm(int sig) { (void)sig; fired = 1; handled++; }

static int timer_loop(void)
{
    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 0}, {0, 50000}};
    setitimer(ITIMER_REAL, &it, NULL);
    unsigned long spins = 0;
    while (!fired) spins++;                 /* no system call: only the timer can end this */
    printf("the timer interrupted the loop: %d\n", spins > 0);
    return 0;
}

static int timer_storm(void)
{
    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 1}, {0, 1}};
    setitimer(ITIMER_REAL, &it, NULL);
    uint64_t x = 88172645463325252ULL;
    for (long i = 0; i < 3000000; i++) {    /* progress under the storm */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("computed %llx under the storm, handler ran: %d\n", (unsigned long long)x, handled > 0);
    return 0;
}

/* A memory-heavy loop (a matrix product) under a 1 ms timer: every tick stops the engine and
 * runs a handler; the result must not change (an instruction run twice after a tick would). */
static int timer_matrix(void)
{
    static int32_t a[16][16], b[16][16], c[16][16];
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            a[i][j] = (i * 7 + j * 3) % 255 - 128;
            b[i][j] = (i * 5 + j * 11) % 255 - 128;
        }
    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
    for (long it2 = 0; it2 < 3000; it2++) {
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                int32_t s = 0;
                for (int k = 0; k < 16; k++) s += a[i][k] * b[k][j];
                c[i][j] = s;
            }
        a[it2 % 16][(it2 / 16) % 16] ^= c[(it2 + 3) % 16][it2 % 16] & 0x7f;
        for (int r = 0; r < 16; r++) h = (h ^ (uint64_t)c[r][(r + it2) % 16]) * 0x100000001b3ULL;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("matrix under a 1 ms timer: %016llx, handler ran: %d\n", (unsigned long long)h, handled > 0);
    return 0;
}

/* ---- emsan's own regions ------------------------------------------------------------------------ */
static int own(const char *which)
{
    char *page;
    if (strcmp(which, "heap") == 0) {
        char *obj = malloc(64);
        strcpy(obj, "still here");
        page = (char *)((uintptr_t)obj & ~4095UL);
        SHOW("mmap fixed over it", (long)mmap(page, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
        SHOW("mmap fixed_noreplace over it", (long)mmap(page, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
        SHOW("mremap it", syscall(SYS_mremap, page, 4096, 8192, MREMAP_MAYMOVE));
        SHOW("munmap it", syscall(SYS_munmap, page, 4096));
        printf("the object: %s\n", obj);
        free(obj);
    } else {
        page = (char *)0xffff800000000000UL;
        SHOW("mmap fixed over it", (long)mmap(page, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
        SHOW("mmap fixed_noreplace over it", (long)mmap(page, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
        SHOW("mremap it", syscall(SYS_mremap, page, 4096, 8192, MREMAP_MAYMOVE));
        SHOW("munmap it", syscall(SYS_munmap, page, 4096));
        printf("the object: %s\n", "still here");
    }
    return 0;
}

static int alloc(void)
{
    void *p = pvalloc(SIZE_MAX);
    printf("pvalloc(SIZE_MAX) is NULL: %d\n", p == NULL);
    for (size_t align = 3; align <= 48; align += 7) {
        void *q = memalign(align, 100);
        size_t pow2 = 1;
        while (pow2 < align) pow2 <<= 1;
        printf("memalign(%zu, 100): %s, aligned to %zu: %d\n", align, q ? "an object" : "NULL", pow2,
               q && (uintptr_t)q % pow2 == 0);
        free(q);
    }
    return 0;
}

/* Allocation churn over a spread of sizes: needs shadow for many chunks of emsan's heap. */
static int churn(long n)
{
    static void *keep[512];
    unsigned long x = 1;
    for (long i = 0; i < n; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        unsigned slot = (unsigned)((x >> 33) % 512);
        free(keep[slot]);
        keep[slot] = malloc(1 + (x >> 40) % 6000);
        if (keep[slot]) memset(keep[slot], 1, 1);
    }
    printf("churned %ld\n", n);
    return 0;
}

/* The new mapping layer, as a program sees it: partial unmaps, protections that shrink, moves,
 * MAP_FIXED replacing contents, faults with their exact address. */
static sigjmp_buf back;
static volatile void *fault_addr;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    fault_addr = si->si_addr;
    siglongjmp(back, 1);
}

static int faults(volatile char *p)
{
    fault_addr = NULL;
    if (sigsetjmp(back, 1) == 0) {
        *p = 1;
        return 0;
    }
    return fault_addr == p;
}

static int mapping(void)
{
    struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO};
    sigaction(SIGSEGV, &sa, NULL);
    size_t big = 256UL << 20, pg = 4096;
    char *p = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < big; i += pg) p[i] = (char)(i >> 12);
    printf("unmap the first page of 256 MiB: %d\n", munmap(p, pg) == 0);
    printf("the rest is intact: %d\n", p[pg] == 1 && p[big - pg] == (char)((big - pg) >> 12));
    printf("the first page faults at its exact address: %d\n", faults(p + 123));
    int ok = munmap(p + 8 * pg, pg) == 0;
    int intact = p[7 * pg] == 7 && p[9 * pg] == 9;
    printf("unmap a middle page: %d, neighbours intact %d, it faults %d\n", ok, intact, faults(p + 8 * pg + 5));
    ok = mprotect(p + 16 * pg, 2 * pg, PROT_READ) == 0;
    int wf = faults(p + 17 * pg + 9);
    printf("read-only: %d, a write faults %d, reads work %d\n", ok, wf, p[17 * pg] == 17);
    ok = mprotect(p + 16 * pg, 2 * pg, PROT_READ | PROT_WRITE) == 0;
    printf("writable again: %d, write works %d\n", ok, !faults(p + 17 * pg + 9));
    char *q = mremap(p + 32 * pg, 4 * pg, 8 * pg, MREMAP_MAYMOVE);
    int moved = q != MAP_FAILED && q[0] == 32 && q[3 * pg] == 35;
    int old_faults = q != p + 32 * pg && faults(p + 32 * pg);
    printf("mremap moves the contents: %d, the old place faults %d, the new tail is zero %d\n", moved, old_faults,
           q != MAP_FAILED && q[7 * pg] == 0);
    char *r = mmap(p + 40 * pg, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    printf("MAP_FIXED replaces the contents with zeros: %d\n", r == p + 40 * pg && r[0] == 0 && p[42 * pg] == 42);
    printf("munmap of it all: %d\n", munmap(p, big) == 0);
    return 0;
}

/* Transfers of far more than the buffer holds: the kernel stops at the first unmapped byte. */
static int bigio(void)
{
    int tmp = memfd_create("big", 0);
    long w = syscall(SYS_write, tmp, buf, 4UL << 30);
    printf("write 4 GiB from an 8 KiB buffer: %s\n", w > 0 && w < (1L << 30) ? "a short count" : "unexpected");
    lseek(tmp, 0, SEEK_SET);
    long r = syscall(SYS_read, tmp, buf, 4UL << 30);
    printf("read 4 GiB into an 8 KiB buffer: %s\n", r > 0 && r < (1L << 30) ? "a short count" : "unexpected");
    return 0;
}

/* The report file is swapped for a directory while the program runs, then a heap overflow. */
static int sabotage(const char *path)
{
    unlink(path);
    mkdir(path, 0700);
    volatile char *obj = malloc(16);
    obj[16] = 'x';
    free((void *)obj);
    printf("still running\n");
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *what = argc > 1 ? argv[1] : "";
    if (strcmp(what, "args") == 0) return args();
    if (strcmp(what, "proc") == 0 && argc > 2) return proc(argv[0], argv[2]);
    if (strcmp(what, "timer-loop") == 0) return timer_loop();
    if (strcmp(what, "timer-storm") == 0) return timer_storm();
    if (strcmp(what, "timer-matrix") == 0) return timer_matrix();
    if (strcmp(what, "own") == 0 && argc > 2) return own(argv[2]);
    if (strcmp(what, "alloc") == 0) return alloc();
    if (strcmp(what, "churn") == 0 && argc > 2) return churn(atol(argv[2]));
    if (strcmp(what, "mapping") == 0) return mapping();
    if (strcmp(what, "bigio") == 0) return bigio();
    if (strcmp(what, "sabotage") == 0 && argc > 2) return sabotage(argv[2]);
    if (strcmp(what, "getppid") == 0) {
        errno = 0;
        long r = syscall(SYS_getppid);
        printf("getppid: %s errno %d\n", r > 0 ? "a pid" : "no pid", errno);
        return 0;
    }
    fprintf(stderr, "usage: hostile args | proc WORKDIR | timer-loop | timer-storm | timer-matrix | own heap|kernel | alloc | "
                    "churn N | mapping | bigio | sabotage PATH | getppid\n");
    return 2;
}
