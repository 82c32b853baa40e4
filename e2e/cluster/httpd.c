/* The cluster test's server pod: a static HTTP/1.1 server in one process
 * (the HTTP tracer labels a request with the pod of the process that
 * served it, so a server that forks a child per connection would leave
 * it a process already gone). GET / answers 200, anything else 404; one
 * request per connection. Usage: httpd PORT. Stops on SIGTERM. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void serve(int c)
{
	char req[4096];
	size_t got = 0;
	while (got < sizeof(req) - 1) {
		ssize_t n = read(c, req + got, sizeof(req) - 1 - got);
		if (n <= 0)
			return;
		got += (size_t)n;
		req[got] = 0;
		if (strstr(req, "\r\n\r\n"))
			break;
	}
	int ok = strncmp(req, "GET / ", 6) == 0;
	const char *body = ok ? "hello from the web pod\n" : "not found\n";
	char resp[256];
	int len = snprintf(resp, sizeof(resp),
			   "HTTP/1.1 %s\r\nContent-Type: text/plain\r\n"
			   "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
			   ok ? "200 OK" : "404 Not Found", strlen(body), body);
	if (len > 0 && write(c, resp, (size_t)len) < 0)
		perror("write");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: httpd PORT\n");
		return 2;
	}
	struct sigaction sa = { .sa_handler = on_term };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((unsigned short)atoi(argv[1])) };
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 64) < 0) {
		perror("listen");
		return 1;
	}
	fprintf(stderr, "httpd: listening on :%s\n", argv[1]);
	while (!stop) {
		int c = accept(s, NULL, NULL);
		if (c < 0)
			continue;
		serve(c);
		close(c);
	}
	return 0;
}
