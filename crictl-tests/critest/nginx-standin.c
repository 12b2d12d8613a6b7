/*
 * Stand-in for nginx in critest's fixture images (e2e-test-images/nginx, hostnet-nginx).
 *
 * The namespace tests look for what a real nginx master shows: a process named
 * "nginx" (pidof), "master process" in its /proc/PID/cmdline, and its pid in
 * /var/run/nginx.pid. The serving itself is left to busybox httpd, started as a child.
 *
 *   /usr/sbin/nginx [PORT]     serve /usr/share/nginx/html on PORT (80 by default)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char master_title[] = "nginx: master process nginx";

int main(int argc, char **argv)
{
    const char *port = argc > 1 ? argv[1] : "80";

    /* Re-executing under the master's title rewrites cmdline; the kernel names the
     * process after the executed file, so the path (not /proc/self/exe) keeps it "nginx". */
    if (strcmp(argv[0], master_title) != 0) {
        char *master_argv[] = {(char *)master_title, (char *)port, NULL};
        execv("/usr/sbin/nginx", master_argv);
        perror("nginx: re-exec");
        return 1;
    }

    FILE *pid_file = fopen("/var/run/nginx.pid", "w");
    if (pid_file == NULL || fprintf(pid_file, "%d\n", (int)getpid()) < 0 || fclose(pid_file) != 0) {
        perror("nginx: /var/run/nginx.pid");
        return 1;
    }

    pid_t worker = fork();
    if (worker < 0) {
        perror("nginx: fork");
        return 1;
    }
    if (worker == 0) {
        execl("/usr/sbin/httpd", "httpd", "-f", "-p", port, "-h", "/usr/share/nginx/html", (char *)NULL);
        perror("nginx: exec httpd");
        _exit(127);
    }
    printf("nginx stand-in: serving /usr/share/nginx/html on port %s\n", port);
    fflush(stdout);

    int status;
    while (waitpid(worker, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("nginx: waitpid");
            return 1;
        }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
