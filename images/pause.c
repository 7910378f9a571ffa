/* The pod sandbox's process (what registry.k8s.io/pause runs), for clusters that cannot pull:
 * sleeps until INT or TERM, reaping the children it inherits. e2e/cluster/up and
 * e2e/kind/node-image build it statically. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(int s)
{
	(void)s;
	_exit(0);
}

static void reap(int s)
{
	(void)s;
	while (waitpid(-1, 0, WNOHANG) > 0)
		;
}

int main(void)
{
	struct sigaction a = {0};
	a.sa_handler = die;
	sigaction(SIGINT, &a, 0);
	sigaction(SIGTERM, &a, 0);
	struct sigaction r = {0};
	r.sa_handler = reap;
	r.sa_flags = SA_NOCLDSTOP;
	sigaction(SIGCHLD, &r, 0);
	for (;;)
		pause();
}
