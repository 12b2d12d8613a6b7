# escape=`

FROM mcr.microsoft.com/windows/servercore
WORKDIR C:\app
RUN dir `
    C:\
ENV PATH="C:\tools;${PATH}" `
    HOME=C:\Users
COPY . C:\app\
