/* The Linux personality, file side: argv, environment, stdin, files, directories, pipes.
 *
 * usage: os_files WORKDIR [ARGS...] < input
 * Prints only deterministic facts (sizes, contents, sorted names, errno values) so stdout can be
 * compared byte for byte with a native run. Exits with the number of failed checks plus 40.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

static int failures;

#define CHECK(cond) do { if (!(cond)) { failures++; printf("FAILED line %d: %s\n", __LINE__, #cond); } } while (0)

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void args_and_env(int argc, char **argv)
{
    printf("argc=%d\n", argc);
    for (int i = 2; i < argc; i++)
        printf("argv[%d]=<%s> len=%zu\n", i, argv[i], strlen(argv[i]));
    const char *v = getenv("OS_FILES_VAR");
    printf("OS_FILES_VAR=%s\n", v ? v : "(unset)");
    printf("OS_FILES_MISSING=%s\n", getenv("OS_FILES_MISSING") ? "set" : "(unset)");
    CHECK(setenv("OS_FILES_NEW", "42", 1) == 0 && strcmp(getenv("OS_FILES_NEW"), "42") == 0);
}

static void standard_input(void)
{
    char buf[256];
    unsigned long bytes = 0, lines = 0, sum = 0;
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            sum = sum * 31 + (unsigned char)buf[i];
            lines += buf[i] == '\n';
        }
        bytes += n;
    }
    CHECK(n == 0);
    printf("stdin: %lu bytes, %lu lines, hash %08lx\n", bytes, lines, sum & 0xffffffffUL);
}

static void files(void)
{
    int fd = open("data.txt", O_CREAT | O_TRUNC | O_RDWR, 0640);
    CHECK(fd >= 0);
    const char *text = "first line\nsecond line\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    struct iovec iov[2] = {{"third ", 6}, {"line\n", 5}};
    CHECK(writev(fd, iov, 2) == 11);
    CHECK(lseek(fd, 0, SEEK_CUR) == 34);
    CHECK(lseek(fd, 6, SEEK_SET) == 6);
    char buf[64] = {0};
    CHECK(read(fd, buf, 4) == 4);
    printf("read after seek: %s\n", buf);
    CHECK(pwrite(fd, "FIRST", 5, 0) == 5);
    memset(buf, 0, sizeof buf);
    CHECK(pread(fd, buf, 11, 0) == 11);
    printf("pread: %s", buf);
    CHECK(lseek(fd, 0, SEEK_END) == 34);

    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    printf("fstat: size=%lld regular=%d mode=%o\n", (long long)st.st_size, S_ISREG(st.st_mode),
           (unsigned)(st.st_mode & 0777) & ~0022u);
    CHECK(ftruncate(fd, 10) == 0);
    CHECK(stat("data.txt", &st) == 0 && st.st_size == 10);
    printf("after ftruncate: size=%lld\n", (long long)st.st_size);
    CHECK(close(fd) == 0);
    CHECK(close(fd) == -1 && errno == EBADF);

    FILE *f = fopen("data.txt", "a+");
    CHECK(f != NULL);
    fprintf(f, "|appended %d|\n", 7);
    rewind(f);
    char line[64];
    CHECK(fgets(line, sizeof line, f) != NULL);
    printf("stdio: %s", line);
    fclose(f);

    CHECK(rename("data.txt", "renamed.txt") == 0);
    CHECK(access("data.txt", F_OK) == -1 && errno == ENOENT);
    CHECK(access("renamed.txt", R_OK | W_OK) == 0);
    CHECK(symlink("renamed.txt", "link.txt") == 0);
    char target[64] = {0};
    CHECK(readlink("link.txt", target, sizeof target - 1) == 11);
    printf("readlink: %s\n", target);
    CHECK(lstat("link.txt", &st) == 0 && S_ISLNK(st.st_mode));
    CHECK(stat("link.txt", &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 23);

    errno = 0;
    CHECK(open("no/such/file", O_RDONLY) == -1);
    printf("open missing: errno=%d (%s)\n", errno, strerror(errno));
    CHECK(open("renamed.txt", O_CREAT | O_EXCL | O_WRONLY, 0600) == -1 && errno == EEXIST);
    CHECK(unlink("link.txt") == 0);
    CHECK(unlink("renamed.txt") == 0);
}

static void directories(void)
{
    CHECK(mkdir("dir", 0755) == 0);
    CHECK(mkdir("dir", 0755) == -1 && errno == EEXIST);
    const char *names[] = {"zeta", "alpha", "mid", "beta.txt"};
    for (int i = 0; i < 4; i++) {
        char p[64];
        snprintf(p, sizeof p, "dir/%s", names[i]);
        int fd = open(p, O_CREAT | O_WRONLY, 0644);
        CHECK(fd >= 0);
        CHECK(write(fd, p, i + 1) == i + 1);
        close(fd);
    }
    CHECK(mkdir("dir/sub", 0700) == 0);

    DIR *d = opendir("dir");
    CHECK(d != NULL);
    char *seen[16];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 16) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        seen[n++] = strdup(e->d_name);
        if (strcmp(e->d_name, "sub") == 0)
            CHECK(e->d_type == DT_DIR);
        else
            CHECK(e->d_type == DT_REG);
    }
    rewinddir(d);
    int again = 0;
    while (readdir(d) != NULL)
        again++;
    CHECK(again == n + 2);
    closedir(d);
    qsort(seen, n, sizeof *seen, cmp_str);
    printf("dir:");
    for (int i = 0; i < n; i++) {
        printf(" %s", seen[i]);
        free(seen[i]);
    }
    printf("\n");

    char *cwd = getcwd(NULL, 0);
    CHECK(chdir("dir/sub") == 0);
    char here[4096];
    CHECK(getcwd(here, sizeof here) != NULL);
    CHECK(strlen(here) == strlen(cwd) + 8 && strcmp(here + strlen(cwd), "/dir/sub") == 0);
    int fd = open("../mid", O_RDONLY);
    char b[8] = {0};
    CHECK(fd >= 0 && read(fd, b, sizeof b) == 3);
    printf("via ..: %s\n", b);
    close(fd);
    CHECK(chdir(cwd) == 0);
    free(cwd);

    int dfd = open("dir", O_RDONLY | O_DIRECTORY);
    CHECK(dfd >= 0);
    struct stat st;
    CHECK(fstatat(dfd, "zeta", &st, 0) == 0 && st.st_size == 1);
    CHECK(openat(dfd, "zeta", O_RDONLY | O_DIRECTORY) == -1 && errno == ENOTDIR);
    for (int i = 0; i < 4; i++)
        CHECK(unlinkat(dfd, names[i], 0) == 0);
    CHECK(unlinkat(dfd, "sub", AT_REMOVEDIR) == 0);
    close(dfd);
    CHECK(rmdir("dir") == 0);
    CHECK(rmdir("dir") == -1 && errno == ENOENT);
    printf("directories removed\n");
}

static void more_files(void)
{
    /* timestamps: utimes, then utimensat leaving one of the two alone */
    int fd = open("times", O_CREAT | O_WRONLY, 0644);
    CHECK(fd >= 0);
    struct timeval tv[2] = {{1000000000, 250000}, {1200000000, 500000}};
    CHECK(utimes("times", tv) == 0);
    struct timespec ts[2] = {{0, UTIME_OMIT}, {1300000000, 123456789}};
    CHECK(futimens(fd, ts) == 0);
    struct stat st;
    CHECK(stat("times", &st) == 0);
    printf("times: atime %lld.%09ld mtime %lld.%09ld\n", (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
           (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    ts[0].tv_sec = 1100000000;
    ts[0].tv_nsec = 0;
    ts[1].tv_nsec = UTIME_OMIT;
    CHECK(utimensat(AT_FDCWD, "times", ts, 0) == 0);
    CHECK(stat("times", &st) == 0 && st.st_atim.tv_sec == 1100000000 && st.st_mtim.tv_sec == 1300000000);
    close(fd);
    CHECK(unlink("times") == 0);

    /* a FIFO: created with mknod's sibling, opened non-blocking for reading */
    CHECK(mkfifo("fifo", 0600) == 0);
    CHECK(stat("fifo", &st) == 0 && S_ISFIFO(st.st_mode));
    int r = open("fifo", O_RDONLY | O_NONBLOCK);
    int w = open("fifo", O_WRONLY);
    CHECK(r >= 0 && w >= 0 && write(w, "fifo!", 5) == 5);
    char buf[8] = {0};
    CHECK(read(r, buf, sizeof buf) == 5);
    printf("fifo: %s\n", buf);
    close(r);
    close(w);
    CHECK(unlink("fifo") == 0);

    /* memfd: a file with no name, mapped after writing */
    int m = memfd_create("emsan-test", MFD_CLOEXEC);
    CHECK(m >= 0 && write(m, "in memory", 9) == 9);
    char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, m, 0);
    CHECK(p != MAP_FAILED && memcmp(p, "in memory", 9) == 0);
    CHECK(fstat(m, &st) == 0 && st.st_size == 9);
    printf("memfd: size %lld\n", (long long)st.st_size);
    munmap(p, 4096);
    close(m);

    /* telldir/seekdir come back to the same entry */
    CHECK(mkdir("walk", 0755) == 0);
    const char *names[] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++) {
        char path[32];
        snprintf(path, sizeof path, "walk/%s", names[i]);
        close(open(path, O_CREAT | O_WRONLY, 0644));
    }
    DIR *d = opendir("walk");
    readdir(d);
    long pos = telldir(d);
    struct dirent *e = readdir(d);
    char first[256];
    snprintf(first, sizeof first, "%s", e->d_name);
    readdir(d);
    seekdir(d, pos);
    e = readdir(d);
    CHECK(e != NULL && strcmp(e->d_name, first) == 0);
    closedir(d);
    for (int i = 0; i < 3; i++) {
        char path[32];
        snprintf(path, sizeof path, "walk/%s", names[i]);
        CHECK(unlink(path) == 0);
    }
    CHECK(rmdir("walk") == 0);
    printf("seekdir ok\n");
}

static void pipes(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(write(p[1], "through the pipe", 16) == 16);
    struct pollfd pfd = {p[0], POLLIN, 0};
    CHECK(poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN));
    char buf[32] = {0};
    CHECK(read(p[0], buf, sizeof buf) == 16);
    printf("pipe: %s\n", buf);
    CHECK(poll(&pfd, 1, 0) == 0);

    /* dup2 a pipe onto stdout, as a shell does, then restore it */
    fflush(stdout);
    int saved = dup(1);
    CHECK(dup2(p[1], 1) == 1);
    printf("redirected %d\n", 99);
    fflush(stdout);
    CHECK(dup2(saved, 1) == 1);
    close(saved);
    memset(buf, 0, sizeof buf);
    CHECK(read(p[0], buf, sizeof buf) == 14);
    printf("pipe got: %s", buf);

    CHECK(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
    CHECK((fcntl(p[0], F_GETFL) & O_NONBLOCK) != 0);
    CHECK(read(p[0], buf, 1) == -1 && errno == EAGAIN);
    close(p[1]);
    CHECK(read(p[0], buf, 1) == 0);
    close(p[0]);

    int q[2];
    CHECK(pipe2(q, O_CLOEXEC) == 0);
    CHECK(fcntl(q[0], F_GETFD) == FD_CLOEXEC);
    close(q[0]);
    CHECK(write(q[1], "x", 1) == -1 && errno == EPIPE);    /* SIGPIPE ignored below */
    close(q[1]);
}

int main(int argc, char **argv)
{
    if (argc < 2 || chdir(argv[1]) != 0) {
        fprintf(stderr, "usage: os_files WORKDIR [ARGS...]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    args_and_env(argc, argv);
    standard_input();
    files();
    directories();
    more_files();
    pipes();
    printf("failures=%d\n", failures);
    return 40 + failures;
}
