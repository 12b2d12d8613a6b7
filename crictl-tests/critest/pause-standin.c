/*
 * Stand-in for registry.k8s.io/pause: holds the pod's namespaces doing nothing, reaps
 * what gets reparented to it (it is pid 1 of a shared pid namespace), and exits 0 on
 * SIGTERM or SIGINT. Unlike a shell loop it starts no child of its own, which critest's
 * pgrep in a pod's pid namespace would find.
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal_number)
{
    (void)signal_number;
    _exit(0);
}

static void reap(int signal_number)
{
    (void)signal_number;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void)
{
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) {
        pause();
    }
}
