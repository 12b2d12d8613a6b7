FROM busybox
RUN <<EOF
echo hello
echo "$HOME"
EOF
RUN <<-'SCRIPT' sh -x
	set -e
	echo tabs stripped
	SCRIPT
RUN cat <<A <<B > /both
first
A
second
B
COPY <<config.txt <<"raw.txt" /etc/app/
name=$NAME
config.txt
literal $NAME
raw.txt
