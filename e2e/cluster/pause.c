/* The pod sandbox's process for the cluster harness's nodes (e2e/cluster):
 * it holds the pod's namespaces, reaps the zombies of a shared PID
 * namespace and exits on SIGINT or SIGTERM. Built static, alone in the
 * image localhost/bpfleet/pause (e2e/cluster/images.sh), because this
 * machine cannot pull the usual sandbox image. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { _exit(sig == SIGTERM || sig == SIGINT ? 0 : 1); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {.sa_handler = quit};
  struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &stop, NULL) || sigaction(SIGTERM, &stop, NULL) ||
      sigaction(SIGCHLD, &child, NULL))
    return 1;
  for (;;)
    pause();
}
