/* Waiting and events in one process: select, pselect, poll, epoll, eventfd, sockets,
 * sigtimedwait, sigsuspend with an interval timer, wait4 without children.
 *
 * usage: os_waits WORKDIR
 * Prints only deterministic facts; exits with 70 + the number of failed checks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;

#define CHECK(cond) do { if (!(cond)) { failures++; printf("FAILED line %d: %s\n", __LINE__, #cond); } } while (0)

static void selecting(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    fd_set r, w;
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    struct timeval tv = {0, 0};
    CHECK(select(p[0] + 1, &r, NULL, NULL, &tv) == 0);
    CHECK(write(p[1], "abc", 3) == 3);
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    FD_ZERO(&w);
    FD_SET(p[1], &w);
    tv.tv_sec = 1;
    int n = select(p[1] + 1, &r, &w, NULL, &tv);
    printf("select: %d ready, read end %d, write end %d\n", n, FD_ISSET(p[0], &r), FD_ISSET(p[1], &w));

    char buf[8];
    CHECK(read(p[0], buf, sizeof buf) == 3);
    struct timespec ts = {0, 20 * 1000 * 1000};
    FD_ZERO(&r);
    FD_SET(p[0], &r);
    CHECK(pselect(p[0] + 1, &r, NULL, NULL, &ts, NULL) == 0);
    struct pollfd pfd = {p[0], POLLIN, 0};
    CHECK(poll(&pfd, 1, 20) == 0);
    close(p[1]);
    CHECK(poll(&pfd, 1, 1000) == 1 && (pfd.revents & POLLHUP));
    printf("after close: revents has POLLHUP %d\n", !!(pfd.revents & POLLHUP));
    FD_ZERO(&r);
    FD_SET(p[0] + 50, &r);
    errno = 0;
    CHECK(select(p[0] + 51, &r, NULL, NULL, &tv) == -1);
    printf("select on a closed fd: errno %d (EBADF=%d)\n", errno, EBADF);
    close(p[0]);
}

static void epolling(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1122334455667788ULL};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == 0);
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == -1 && errno == EEXIST);
    struct epoll_event got[4];
    CHECK(epoll_wait(ep, got, 4, 0) == 0);
    CHECK(write(p[1], "x", 1) == 1);
    memset(got, 0, sizeof got);
    int n = epoll_wait(ep, got, 4, 1000);
    printf("epoll: %d event(s), EPOLLIN %d, data %llx\n", n, !!(got[0].events & EPOLLIN),
           (unsigned long long)got[0].data.u64);
    ev.events = EPOLLOUT;
    ev.data.fd = p[1];
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[1], &ev) == 0);
    n = epoll_wait(ep, got, 4, 1000);
    CHECK(n == 2);
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL) == 0);
    n = epoll_wait(ep, got, 4, 1000);
    printf("epoll after DEL: %d event(s), fd matches %d\n", n, got[0].data.fd == p[1]);
    close(ep);
    close(p[0]);
    close(p[1]);

    int efd = eventfd(3, EFD_CLOEXEC);
    CHECK(efd >= 0);
    uint64_t v = 4;
    CHECK(write(efd, &v, 8) == 8);
    CHECK(read(efd, &v, 8) == 8);
    printf("eventfd counter %llu\n", (unsigned long long)v);
    close(efd);
    efd = eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK);
    int reads = 0;
    while (read(efd, &v, 8) == 8)
        reads++;
    printf("semaphore eventfd: %d reads, then errno EAGAIN %d\n", reads, errno == EAGAIN);
    close(efd);
}

static void sockets(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(send(sv[0], "ping", 4, 0) == 4);
    char buf[16] = {0};
    CHECK(recv(sv[1], buf, sizeof buf, 0) == 4);
    CHECK(write(sv[1], "pong", 4) == 4);
    CHECK(read(sv[0], buf + 4, 4) == 4);
    printf("socketpair: %s\n", buf);
    CHECK(shutdown(sv[0], SHUT_WR) == 0);
    CHECK(recv(sv[1], buf, sizeof buf, 0) == 0);
    close(sv[0]);
    close(sv[1]);

    int srv = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, "sock");
    unlink("sock");
    CHECK(bind(srv, (struct sockaddr *)&addr, sizeof addr) == 0);
    CHECK(listen(srv, 4) == 0);
    int cli = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(connect(cli, (struct sockaddr *)&addr, sizeof addr) == 0);
    struct sockaddr_un peer;
    socklen_t len = sizeof peer;
    int conn = accept4(srv, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
    CHECK(conn >= 0);
    struct msghdr msg = {0};
    struct iovec iov[2] = {{"hello ", 6}, {"unix", 4}};
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    CHECK(sendmsg(cli, &msg, 0) == 10);
    char a[6] = {0}, b[8] = {0};
    struct iovec in[2] = {{a, 5}, {b, 7}};
    struct msghdr rmsg = {.msg_iov = in, .msg_iovlen = 2};
    CHECK(recvmsg(conn, &rmsg, 0) == 10);
    printf("sendmsg/recvmsg: [%s][%s]\n", a, b);
    struct sockaddr_un name;
    len = sizeof name;
    CHECK(getsockname(srv, (struct sockaddr *)&name, &len) == 0);
    printf("getsockname: %s\n", name.sun_path);
    int type = 0;
    len = sizeof type;
    CHECK(getsockopt(conn, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM);
    close(conn);
    close(cli);
    close(srv);
    CHECK(unlink("sock") == 0);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

static void signal_waits(void)
{
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &set, &old) == 0);
    CHECK(raise(SIGUSR1) == 0);
    siginfo_t info;
    int sig = sigwaitinfo(&set, &info);
    printf("sigwaitinfo: signal %d, si_code %d\n", sig, info.si_code);
    struct timespec ts = {0, 20 * 1000 * 1000};
    errno = 0;
    CHECK(sigtimedwait(&set, &info, &ts) == -1);
    printf("sigtimedwait with nothing pending: errno EAGAIN %d\n", errno == EAGAIN);

    /* the race-free pattern: SIGALRM blocked except inside sigsuspend */
    signal(SIGALRM, on_alarm);
    sigaddset(&set, SIGALRM);
    CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
    struct itimerval it = {{0, 30000}, {0, 30000}};
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
    sigset_t during;
    sigemptyset(&during);
    for (int i = 0; i < 3; i++)
        CHECK(sigsuspend(&during) == -1 && errno == EINTR);
    struct itimerval off = {{0, 0}, {0, 0}}, prev;
    CHECK(setitimer(ITIMER_REAL, &off, &prev) == 0);
    CHECK(prev.it_interval.tv_usec == 30000);
    CHECK(getitimer(ITIMER_REAL, &prev) == 0 && prev.it_value.tv_sec == 0 && prev.it_value.tv_usec == 0);
    sigset_t now;
    CHECK(sigprocmask(SIG_BLOCK, NULL, &now) == 0);
    printf("sigsuspend: %d alarms handled, SIGALRM blocked again %d\n", (int)alarms, sigismember(&now, SIGALRM));
    CHECK(sigprocmask(SIG_SETMASK, &old, NULL) == 0);
}

int main(int argc, char **argv)
{
    if (argc != 2 || chdir(argv[1]) != 0) {
        fprintf(stderr, "usage: os_waits WORKDIR\n");
        return 2;
    }
    selecting();
    epolling();
    sockets();
    signal_waits();
    errno = 0;
    CHECK(wait4(-1, NULL, WNOHANG, NULL) == -1);
    printf("wait4 without children: errno ECHILD %d\n", errno == ECHILD);
    errno = 0;
    int prio = getpriority(PRIO_PROCESS, 0);
    printf("getpriority ok %d\n", errno == 0 && prio >= -20 && prio <= 19);
    printf("failures=%d\n", failures);
    return 70 + failures;
}
