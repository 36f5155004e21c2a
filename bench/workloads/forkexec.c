/* bench/procs.py's workload: N cycles of fork + wait (the child _exits), or of fork + execv of
 * this program (argument "child": exits at once) + wait. Prints the number of cycles that ended
 * with status 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0)
        return 0;
    if (argc < 3)
        return 2;
    int exec = strcmp(argv[1], "exec") == 0;
    long n = atol(argv[2]), ok = 0;
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            if (exec) {
                char *args[] = {argv[0], (char *)"child", NULL};
                execv(argv[0], args);     /* the path the run was given (not /proc/self/exe: valgrind's own) */
                _exit(127);
            }
            _exit(0);
        }
        int st;
        if (waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0)
            ok++;
    }
    printf("%ld\n", ok);
    return ok == n ? 0 : 1;
}
